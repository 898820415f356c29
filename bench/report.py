"""What a run shows a reader: the markdown table (``results.md``) and the chart (``results.png``).

Ratios are between contenders of the same run and scenario (the machine is
shared and noisy, so figures of different runs do not compare); each req/s
figure is the median of the rounds with their min-max beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The contenders each scenario's ratios are taken against, when they took part.
BASES = ("fastapi-cache2", "plain", "nginx", "varnish")
SHORT = {"fastapi-cache2": "fc2", "plain": "plain", "nginx": "nginx", "varnish": "varnish"}
#: The bursts, each a table of its own: what was counted, and under which key of the outcome.
BURSTS = {
    "stampede": ("database reads (PostgreSQL)", "db_reads"),
    "upstream-stampede": ("upstream requests (counted by the upstream)", "upstream_requests"),
}


def _ratio_cells(data: dict[str, Any], name: str, bases: list[str]) -> list[str]:
    return [f"{data['ratios'][f'vs_{b}'][name]:.2f}" for b in bases]


def table(results: dict[str, Any]) -> str:
    lines: list[str] = []
    for scenario, data in results["scenarios"].items():
        lines += [f"**`{scenario}`**: {data['what']}.", ""]
        if scenario in BURSTS:
            counted, field = BURSTS[scenario]
            head = ["contender", "requests", "answers", "X-Cache", counted, "burst seconds"]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for entry in data["contenders"].values():
                o = entry["outcome"]
                statuses = ", ".join(f"{k}: {v}" for k, v in sorted(o["statuses"].items()))
                x_cache = ", ".join(f"{k}: {v}" for k, v in sorted(o["x_cache"].items()))
                cells = [entry["label"], str(o["requests"]), statuses, x_cache, str(o[field])]
                cells.append(f"{o['seconds']:.2f}")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
            continue
        bases = [b for b in BASES if f"vs_{b}" in data["ratios"]]
        head = ["contender", "req/s median (min-max)", "p50 ms", "p99 ms", *[f"x {SHORT[b]} req/s" for b in bases]]
        if any(f"p50_vs_{b}" in data["ratios"] for b in bases):
            head += [f"p50 / {SHORT[b]} p50" for b in bases if f"p50_vs_{b}" in data["ratios"]]
        vs_hit = "rps_vs_hit" in data["ratios"]  # list-hit: against the same contender's item hit
        if vs_hit:
            head += ["x item hit req/s", "p99 / item hit p99"]
        head += ["CPU us/req", "RSS MiB"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, entry in data["contenders"].items():
            m = entry["median"]
            cells = [
                entry["label"],
                f"{m['rps']:,.0f} ({m['rps_min']:,.0f}-{m['rps_max']:,.0f})",
                f"{m['p50_ms']:.2f}",
                f"{m['p99_ms']:.2f}",
                *_ratio_cells(data, name, bases),
            ]
            cells += [f"{data['ratios'][f'p50_vs_{b}'][name]:.2f}" for b in bases if f"p50_vs_{b}" in data["ratios"]]
            if vs_hit:
                pair = [data["ratios"][key].get(name) for key in ("rps_vs_hit", "p99_vs_hit")]
                cells += ["" if v is None else f"{v:.2f}" for v in pair]
            cells.append(f"{m.get('cpu_us_per_request', 0):.0f}")
            cells.append(f"{entry['rss_mib_after']:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    s, machine = results["settings"], results["machine"]
    listing = results.get("list_data") or {}
    if listing:
        lines.append(
            f"List scenarios: {listing['items']:,} books by {listing['authors']:,} authors, written, indexed "
            f"and analysed in {listing['seed_seconds']:.0f} s."
        )
    if results.get("api_rss_mib_after") is not None:
        lines.append(f"The api role's RSS after the run: {results['api_rss_mib_after']:.0f} MiB.")
    lines.append(
        f"wrk -t1 -c{s['connections']} -d{s['duration']}s after a {s['warmup']}s warm-up, {s['rounds']} rounds "
        f"(order rotated; median, min-max), one worker per server, {machine['cpus']} CPUs, "
        f"load average (1 min) before/after {machine['load_before']} / {machine['load_after']}, {results['date']}."
    )
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    """Latency (p50 dot, p99 triangle, joined) against throughput (min-max bar), one panel per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    panels = [(name, d) for name, d in results["scenarios"].items() if name not in BURSTS]
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(13, 5 * rows), squeeze=False)
    colours: dict[str, Any] = {}
    palette = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]
    for ax, (scenario, data) in zip(axes.flat, panels, strict=False):
        for name, entry in data["contenders"].items():
            colour = colours.setdefault(name, palette[len(colours) % len(palette)])
            m = entry["median"]
            ax.plot([m["rps"], m["rps"]], [m["p50_ms"], m["p99_ms"]], color=colour, linewidth=2)
            ax.plot(m["rps"], m["p50_ms"], "o", color=colour, markersize=9, label=f"{entry['label']} (p50)")
            ax.plot(m["rps"], m["p99_ms"], "^", color=colour, markersize=9)
            ax.errorbar(
                m["rps"], m["p50_ms"], xerr=[[m["rps"] - m["rps_min"]], [m["rps_max"] - m["rps"]]],
                color=colour, capsize=4, linewidth=1,
            )  # fmt: skip
            ax.annotate(
                f"{m['rps']:,.0f}/s", (m["rps"], m["p99_ms"]), textcoords="offset points", xytext=(6, 4), fontsize=9
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
            axis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title(f"{scenario}: {data['what']}", fontsize=10, wrap=True)
        ax.set_xlabel("requests per second (log; bar = min-max of rounds)")
        ax.set_ylabel("latency ms (log): dot p50, triangle p99")
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.15, y=0.15)
        ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    s, machine = results["settings"], results["machine"]
    fig.suptitle(
        f"CachedApi bench: wrk -t1 -c{s['connections']}, {s['rounds']} x {s['duration']}s, one worker each, "
        f"{machine['cpus']} CPUs, load {machine['load_before']} -> {machine['load_after']}  (down and right is better)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
