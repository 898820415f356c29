"""Build the runtime image from the Dockerfile with podman, on a base made here from Debian's packages.

No registry can be reached from the machines this project is tested on, so nothing is
pulled: the base ``docker.io/library/debian:bookworm-slim`` is made with
``debootstrap --variant=minbase bookworm`` (then slimmed as the official image is:
no documentation, locales or package lists) and imported under that name. The
Dockerfile then builds as it would anywhere else, with Debian's python3 and the
package from PyPI.

The pods the operator renders also name ``redis:7.4-alpine`` and ``postgres:16-alpine``.
Those cannot be pulled either, so ``images/`` holds stand-ins built from Debian's own
``redis-server`` and ``postgresql`` packages that keep the contract the rendered pods
rely on (the binaries on PATH, PostgreSQL's uid 70, ``PGDATA`` and the
``POSTGRES_*_FILE`` variables), tagged with the names the renderer uses. They are test
fixtures: on a cluster, the official images are pulled.

podman is installed from Debian's packages when it is missing and this runs as root;
its configuration for these machines (runc and cgroupfs: crun refuses cgroup v1 hybrid
mounts, and its default ulimits exceed the machine's) goes in a file of our own named
by ``CONTAINERS_CONF``, never into /etc.

    python -m tests.e2e.image build

prints the image's name and size.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cachedapi.operator.children import database, inputs, redis
from tests.e2e import build

ROOT = Path(__file__).resolve().parents[2]
STAND_INS = Path(__file__).resolve().parent / "images"
BASE = "docker.io/library/debian:bookworm-slim"
RUNTIME = inputs.DEFAULT_IMAGE
#: The stand-ins, by the name the renderer gives their image.
STAND_IN_IMAGES = {"redis": f"docker.io/library/{redis.IMAGE}", "postgres": f"docker.io/library/{database.IMAGE}"}
MIRROR = "http://deb.debian.org/debian"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
BUILD_CA = "/run/cachedapi-build/ca.crt"

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=1024:1024"]
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
"""
#: Left out of the base, as the official slim image leaves them out.
SLIM_PATHS = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/lib/apt/lists",
              "var/cache/apt", "var/cache/debconf", "var/log")  # fmt: skip


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def environment() -> dict[str, str]:
    """The environment podman runs with: our configuration file, not the machine's."""
    conf = build.cache_root() / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def ensure_tools() -> None:
    """podman, runc and debootstrap, from Debian's packages if they are missing (and iptables, which
    podman's network backend, netavark, runs to make the containers' network)."""
    missing = [tool for tool in ("podman", "runc", "debootstrap", "iptables") if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            f"the image tests need {', '.join(missing)}: apt-get install podman runc debootstrap iptables"
        )
    _say(f"installing {', '.join(missing)} from Debian's packages (podman builds and runs the images)")
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=apt_env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "podman", "runc", "debootstrap",
         "netavark", "aardvark-dns", "conmon", "catatonit", "iptables"],
        check=True, env=apt_env, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def podman(*args: str, check: bool = True, capture: bool = True, timeout: float = 1800) -> str:
    done = subprocess.run(
        ["podman", *args],
        env=environment(),
        capture_output=capture,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({done.returncode}): {(done.stderr or '')[-3000:]}")
    return (done.stdout or "").strip()


def exists(image: str) -> bool:
    return subprocess.run(["podman", "image", "exists", image], env=environment(), check=False).returncode == 0


def ensure_base() -> None:
    """``debian:bookworm-slim`` made by debootstrap, once (podman keeps it)."""
    if exists(BASE):
        return
    _say(f"making {BASE} with debootstrap from {MIRROR} (about a minute)")
    with tempfile.TemporaryDirectory(prefix="cachedapi-base-") as tmp:
        root = Path(tmp) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(root), MIRROR],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        for rel in SLIM_PATHS:
            shutil.rmtree(root / rel, ignore_errors=True)
            (root / rel).mkdir(parents=True, exist_ok=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["podman", "import", "--change", 'CMD ["bash"]', "-", BASE],
            stdin=tar.stdout, env=environment(), capture_output=True, text=True, check=False,
        )  # fmt: skip
        tar.wait()
        if imported.returncode != 0:
            raise RuntimeError(f"podman import failed: {imported.stderr}")


def _pip_conf() -> Path:
    """This machine's pip configuration for the build (its index and CA bundle), as a file of ours:
    the CA bundle is mounted beside it, not over the image's own, which Debian's packages write."""
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False)
    lines = ["[global]"]
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        option = key.split(".", 1)[-1]
        if option in {"index-url", "extra-index-url", "trusted-host", "timeout"}:
            lines.append(f"{option} = {value.strip().strip(chr(39))}")
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"):
        if os.environ.get(name):
            lines.append(f"{name[4:].lower().replace('_', '-')} = {os.environ[name]}")
    if Path(HOST_CA).exists():
        lines.append(f"cert = {BUILD_CA}")
    conf = build.cache_root() / "pip.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _build_args() -> list[str]:
    """Builds reach the package indexes as this machine does: its network, its pip configuration
    and CA bundle (mounted for the build only, never stored in the image)."""
    args = ["--network=host", "--pull=never", "--layers", f"--volume={_pip_conf()}:/etc/pip.conf:ro"]
    if Path(HOST_CA).exists():
        args.append(f"--volume={HOST_CA}:{BUILD_CA}:ro")
    return args


def size(image: str) -> int:
    return int(podman("image", "inspect", image, "--format", "{{.Size}}"))


def ensure_stand_ins() -> None:
    """Build the stand-ins (podman's layer cache makes an unchanged one cost a second)."""
    for name, tag in STAND_IN_IMAGES.items():
        if not exists(tag):
            _say(f"building the stand-in {tag} from Debian's packages")
        podman("build", *_build_args(), "-t", tag, str(STAND_INS / name))


def build_runtime() -> str:
    """Build the runtime image from the Dockerfile (layers cached by podman); its name."""
    ensure_tools()
    ensure_base()
    podman("build", *_build_args(), "-t", RUNTIME, "-f", str(ROOT / "Dockerfile"), str(ROOT))
    # Each build leaves the image it replaced untagged: drop those older than a day (the recent
    # ones are the next build's layer cache).
    podman("image", "prune", "--force", "--filter", "until=24h", check=False)
    return RUNTIME


def main(argv: list[str]) -> int:
    if argv[1:] != ["build"]:
        print("usage: python -m tests.e2e.image build", file=sys.stderr)
        return 2
    started = time.monotonic()
    image = build_runtime()
    print(f"{image} {size(image) / 1e6:.0f} MB (built in {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
