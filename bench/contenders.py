"""The servers measured side by side: each a real process, started and stopped by pid.

A contender knows how to start against the shared ``World`` (PostgreSQL,
Redis, the api role, the seeded items of ``data``) and what wrk sends it in
each scenario (``target``; None when it takes no part: nginx has no miss
path). Adding one is a class with ``start``, ``target`` and ``stop`` and a
line in ``available``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import data, wrk
from cachedapi import contract, model
from cachedapi.dev import devstack, embedded

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-key"
BOOKS = "/v1/books/"
#: The filtered list of the list scenarios: this + an author's number on 6 digits + ``LIST_TAIL``.
LIST_HEAD = "/v1/books?author=List%20author%20"
LIST_TAIL = "&sort=-year,title&limit=20"
#: The author whose page ``list-hit`` reads (cached in the warm-up); ``list-miss`` reads the others.
LIST_HIT_AUTHOR = 0
LIST_SCENARIOS = frozenset({"list-miss", "list-hit"})


def list_path(author: int) -> str:
    return f"{LIST_HEAD}{author:06d}{LIST_TAIL}"


def list_miss_range(world: World) -> tuple[int, int]:
    """The authors ``list-miss`` reads, first and past-the-last: all but ``LIST_HIT_AUTHOR`` and the
    last one (``check_list_page``'s)."""
    return LIST_HIT_AUTHOR + 1, world.items.list_authors - 1


class World:
    """What every contender serves from: one stack (api role, PostgreSQL, Redis) and the seeded items."""

    def __init__(self, api: model.CachedApi, *, miss_items: int, mix_items: int, list_items: int = 0) -> None:
        self.api = api
        self.stack = devstack.Stack(api, api_key=API_KEY, gateway_instances=0)
        self.miss_items = miss_items
        self.mix_items = mix_items
        self.list_items = list_items
        self.seeded: data.Seeded | None = None
        #: item id -> the api role's answer body, which nginx serves from files.
        self.bodies: dict[str, bytes] = {}

    @property
    def database_url(self) -> str:
        return self.stack.apis[0].env[contract.ENV_DATABASE_URL]

    @property
    def items(self) -> data.Seeded:
        assert self.seeded is not None, "World.start() first"
        return self.seeded

    def start(self) -> None:
        self.stack.start()
        books = next(r for r in self.api.spec.resources if r.name == "books")
        self.seeded = data.seed(
            self.database_url,
            workdir=self.stack.workdir,
            miss_items=self.miss_items,
            mix_items=self.mix_items,
            list_items=self.list_items,
            indexes=len(books.indexes),
        )
        api_url = self.stack.apis[0].url
        for item_id in (self.seeded.small_id, self.seeded.large_id):
            self.bodies[item_id] = httpx.get(f"{api_url}{BOOKS}{item_id}", timeout=10).content

    def stop(self) -> None:
        self.stack.stop()


def item_for(world: World, scenario: str) -> str:
    """The one item a single-URL scenario reads."""
    return world.items.large_id if scenario == "large" else world.items.small_id


def standard_target(
    world: World, scenario: str, *, base: str, headers: dict[str, str], contender: Contender
) -> wrk.Target:
    """What every server with the API's paths gets in ``scenario``."""
    if scenario == "miss":
        ids = (str(world.items.miss_ids), str(contender.cursor), BOOKS)
        return wrk.Target(base + BOOKS, headers, script="miss.lua", args=ids)
    if scenario == "list-miss":
        low, high = list_miss_range(world)
        stop = contender.list_stop or high
        start = contender.list_cursor
        if contender.list_wraps and high > low:  # no cache: past the end, the same authors again
            start = low + (start - low) % (high - low)
        wrap = "wrap" if contender.list_wraps else "stop"
        args = (LIST_HEAD, str(start), str(stop), LIST_TAIL, wrap, str(low))
        return wrk.Target(base + BOOKS, headers, script="list_miss.lua", args=args)
    if scenario == "list-hit":
        return wrk.Target(base + list_path(LIST_HIT_AUTHOR), headers)
    if scenario == "mix":
        return wrk.Target(base + BOOKS, headers, script="mix.lua", args=(str(world.items.mix_ids), BOOKS, "5"))
    return wrk.Target(f"{base}{BOOKS}{item_for(world, scenario)}", headers)


class Contender:
    name = ""
    #: A response header the warm-up checks, so that a miss is never measured as a hit.
    expect: tuple[str, str] | None = None
    #: The scenarios it takes part in.
    scenarios: frozenset[str] = frozenset({"hit", "large", "miss", "mix", "stampede", *LIST_SCENARIOS})
    #: Its reads fill the world's Redis under the api role's keys (so cold ids must not be shared).
    shares_cache = False

    def __init__(self) -> None:
        #: How many cold ids (``data.Seeded.miss_ids``) its runs have used: each is read once.
        self.cursor = 0
        #: The next list author ``list-miss`` asks for, and where its slice ends (0: all of them);
        #: a contender without a cache starts again at the first once past the end (``list_wraps``).
        self.list_cursor = LIST_HIT_AUTHOR + 1
        self.list_stop = 0
        self.list_wraps = not self.shares_cache

    def start(self, world: World) -> None:
        raise NotImplementedError

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        raise NotImplementedError

    @property
    def headers(self) -> dict[str, str]:
        return {}

    def target(self, world: World, scenario: str) -> wrk.Target | None:
        if scenario not in self.scenarios:
            return None
        return standard_target(world, scenario, base=self.base, headers=self.headers, contender=self)

    def stop(self) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        """The processes serving (for memory figures): the started process and its children."""
        return []

    def cpu_pids(self, world: World) -> list[int]:
        """Every process a request of this contender costs CPU in (with their children); by default
        its own. The gateway's requests also cost the api role's."""
        return self.pids()


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time spent so far by ``pids`` and their children, in seconds."""
    ticks = 0
    for pid in _tree(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mib(pids: list[int]) -> float:
    """The largest resident set among ``pids`` and their children, in MiB (the target is per process)."""
    largest = 0
    for pid in _tree(pids):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                largest = max(largest, int(line.split()[1]))
    return round(largest / 1024, 1)


def _tree(roots: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class Gateway(Contender):
    """The gateway role, with auth (API key) and the rate limit on, under one HTTP server."""

    expect = ("x-cache", "HIT")
    shares_cache = True

    def __init__(self, server: str, *, env: dict[str, str] | None = None, label: str = "") -> None:
        super().__init__()
        self.server = server
        self.extra_env = env or {}
        self.name = f"cachedapi gateway ({server}{label})"
        self.role: devstack.Instance | None = None

    def start(self, world: World) -> None:
        stack = world.stack
        env = {
            **stack.apis[0].env,
            contract.ENV_UPSTREAM_URL: stack.apis[0].url,
            "CACHEDAPI_HTTP_SERVER": self.server,
            **self.extra_env,
        }
        self.role = devstack.Instance(
            role="gateway", port=embedded.free_port(), env=env, log_path=stack.workdir / f"bench-{id(self)}.log"
        )
        self.role.start()

    @property
    def base(self) -> str:
        assert self.role is not None
        return self.role.url

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": API_KEY}

    def stop(self) -> None:
        if self.role is not None:
            self.role.stop()

    def pids(self) -> list[int]:
        return [self.role.pid] if self.role is not None and self.role.pid is not None else []

    def cpu_pids(self, world: World) -> list[int]:
        api = world.stack.apis[0].pid
        return [*self.pids(), *([api] if api is not None else [])]


class _Process(Contender):
    def __init__(self) -> None:
        super().__init__()
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def _spawn(self, command: list[str], *, log: Path) -> None:
        self.port = self.port or embedded.free_port()
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            embedded.wait_for_port(self.port, proc=self.proc, timeout=30)
        except BaseException:
            self.stop()
            raise

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None:
            embedded.stop_process(self.proc)

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []


class FastApiCache2(_Process):
    """FastAPI + fastapi-cache2 on the same Redis and PostgreSQL (bench/peers)."""

    name = "FastAPI + fastapi-cache2"
    expect = ("x-fastapi-cache", "HIT")
    scenarios = frozenset({"hit", "large", "miss", "mix", "stampede"})

    def start(self, world: World) -> None:
        self.port = embedded.free_port()
        url, redis_url = world.database_url, world.stack.redis.url
        command = [sys.executable, "-m", "bench.peers.fastapi_cache2_peer", str(self.port), url, redis_url]
        self._spawn(command, log=world.stack.workdir / "bench-fastapi-cache2.log")


class Plain(_Process):
    """Plain FastAPI + psycopg, no cache (bench/peers): the miss path's reference."""

    name = "FastAPI + psycopg (no cache)"
    scenarios = frozenset({"miss", "mix", "stampede", "list-miss"})

    def start(self, world: World) -> None:
        self.port = embedded.free_port()
        command = [sys.executable, "-m", "bench.peers.plain_peer", str(self.port), world.database_url]
        self._spawn(command, log=world.stack.workdir / "bench-plain.log")


class Nginx(_Process):
    """nginx serving the same body bytes from a file: the ceiling of this machine."""

    name = "nginx (static file)"
    scenarios = frozenset({"hit", "large"})

    def __init__(self, *, worker_connections: int = 1024) -> None:
        super().__init__()
        self.dir: Path | None = None
        self.worker_connections = worker_connections

    def start(self, world: World) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cachedapi-bench-nginx-"))
        self.dir.chmod(0o755)
        items = self.dir / "items"
        items.mkdir()
        items.chmod(0o755)
        for item_id, body in world.bodies.items():
            (items / item_id).write_bytes(body)
        self.port = embedded.free_port()
        conf = self.dir / "nginx.conf"
        conf.write_text(
            f"""
worker_processes 1;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
{"user root;" if _root() else ""}
events {{ worker_connections {self.worker_connections}; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {self.dir};
    proxy_temp_path {self.dir};
    fastcgi_temp_path {self.dir};
    uwsgi_temp_path {self.dir};
    scgi_temp_path {self.dir};
    server {{
        listen 127.0.0.1:{self.port};
        location /v1/books/ {{
            default_type application/json;
            alias {items}/;
        }}
    }}
}}
""",
            encoding="utf-8",
        )
        self._spawn(["nginx", "-c", str(conf), "-p", str(self.dir)], log=self.dir / "stdout.log")

    def stop(self) -> None:
        super().stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def _root() -> bool:
    return os.geteuid() == 0


def available() -> dict[str, Contender]:
    """Every contender this machine can run, by a short name."""
    found: dict[str, Contender] = {
        "gateway": Gateway("granian"),
        "fastapi-cache2": FastApiCache2(),
        "plain": Plain(),
    }
    if shutil.which("nginx"):
        found["nginx"] = Nginx()
    return found


class GatewayAt(Contender):
    """The gateway and an api role of their own, as they were at a git revision: before and after a
    change, in one run. Their code is a ``git worktree`` of the revision in a temporary directory
    (removed at the end); they share the world's PostgreSQL, Redis, data and configuration."""

    expect = ("x-cache", "HIT")
    shares_cache = True

    def __init__(self, revision: str) -> None:
        super().__init__()
        self.revision = revision
        self.name = f"cachedapi gateway at {revision}"
        self.tree: Path | None = None
        self.api: devstack.Instance | None = None
        self.gateway: devstack.Instance | None = None

    def start(self, world: World) -> None:
        self.tree = Path(tempfile.mkdtemp(prefix="cachedapi-bench-rev-")) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(self.tree), self.revision],
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        stack = world.stack
        env = {**stack.apis[0].env, "PYTHONPATH": str(self.tree)}
        self.api = devstack.Instance(
            role="api",
            port=embedded.free_port(),
            env=env,
            log_path=stack.workdir / f"bench-api-{self.revision}.log",
            cwd=self.tree,
        )
        self.api.start()
        gateway_env = {**env, contract.ENV_UPSTREAM_URL: self.api.url, "CACHEDAPI_HTTP_SERVER": "granian"}
        self.gateway = devstack.Instance(
            role="gateway",
            port=embedded.free_port(),
            env=gateway_env,
            log_path=stack.workdir / f"bench-gateway-{self.revision}.log",
            cwd=self.tree,
        )
        self.gateway.start()

    @property
    def base(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": API_KEY}

    def stop(self) -> None:
        for instance in (self.gateway, self.api):
            if instance is not None:
                instance.stop()
        if self.tree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(self.tree)], cwd=ROOT, check=False)
            shutil.rmtree(self.tree.parent, ignore_errors=True)

    def pids(self) -> list[int]:
        return [i.pid for i in (self.gateway,) if i is not None and i.pid is not None]

    def cpu_pids(self, world: World) -> list[int]:
        return [i.pid for i in (self.gateway, self.api) if i is not None and i.pid is not None]


def variant(name: str) -> Contender | None:
    """Contenders made from their name, run only when named: ``gateway-uvicorn`` is the gateway under
    uvicorn; ``gateway-bp<N>`` under granian with backpressure N (``server.ENV_BACKPRESSURE``);
    ``gateway-at-<revision>`` the gateway and api role as they were at a git revision."""
    if name == "gateway-uvicorn":
        return Gateway("uvicorn")
    if name.startswith("gateway-at-"):
        return GatewayAt(name.removeprefix("gateway-at-"))
    match = re.fullmatch(r"gateway-bp(\d+)", name)
    if match is None:
        return None
    n = match.group(1)
    return Gateway("granian", env={"CACHEDAPI_GATEWAY_BACKPRESSURE": n}, label=f", backpressure {n}")


def warm(contender: Contender, world: World, scenario: str) -> None:
    """Fill the caches and check that the contender answers what it should (single-URL scenarios;
    for ``list-miss``, that a filtered page holds the api role's items, in its order)."""
    target = contender.target(world, scenario)
    if target is None:
        return
    if scenario == "list-miss":
        check_list_page(contender, world)
    if target.script:
        return
    url, headers = target.url, target.headers
    deadline = time.monotonic() + 10
    last = None
    while time.monotonic() < deadline:
        last = httpx.get(url, headers=headers, timeout=5)
        if last.status_code == 200 and (
            contender.expect is None or last.headers.get(contender.expect[0]) == contender.expect[1]
        ):
            return
        time.sleep(0.05)
    detail = "no answer" if last is None else f"{last.status_code} {dict(last.headers)}"
    raise RuntimeError(f"{contender.name}: not serving {url} as expected: {detail}")


def check_list_page(contender: Contender, world: World) -> None:
    """The contender's page of the last list author (read by no scenario) is the api role's: a full
    page of that author's books, in the same order, with a cursor to more."""
    path = list_path(world.items.list_authors - 1)
    answer = httpx.get(contender.base + path, headers=contender.headers, timeout=30)
    expected = httpx.get(world.stack.apis[0].url + path, timeout=30).json()
    got = answer.json() if answer.status_code == 200 else {}
    ids = [item["id"] for item in got.get("items", [])]
    want = [item["id"] for item in expected["items"]]
    author = data.list_author(world.items.list_authors - 1)
    if (
        ids != want
        or len(ids) != 20
        or any(item.get("author") != author for item in got["items"])
        or not got.get("nextCursor")
    ):
        raise RuntimeError(f"{contender.name}: {path} answered {answer.status_code} {ids}, not {want}")
