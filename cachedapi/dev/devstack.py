"""The whole data plane on one machine: ``cachedapi dev``, and the stack tests and bench use.

PostgreSQL and Redis come from ``embedded`` (real servers from pip packages);
the api and gateway roles run as real ``cachedapi runtime`` processes with the
same configuration file the operator would mount, so what runs here is what
runs in a pod. Every process is stopped by its pid in every outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from cachedapi import contract, model
from cachedapi.dev import embedded
from cachedapi.operator.children import config as x_config


def _wait_ready(url: str, proc: subprocess.Popen[bytes], *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process {proc.pid} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (loopback URL we built)
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s ({last})")


class Instance:
    """One ``cachedapi runtime`` process on a fixed loopback port; can be killed and restarted."""

    def __init__(self, *, role: str, port: int, env: dict[str, str], log_path: Path, cwd: Path | None = None) -> None:
        self.role = role
        self.port = port
        self.env = env
        self.log_path = log_path
        #: The working directory, whose ``cachedapi`` (if any) ``python -m`` imports first.
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self, *, wait: bool = True) -> None:
        if self.pid is not None:
            return
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cachedapi", "runtime", "--role", self.role,
                 "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        if wait:
            try:
                _wait_ready(f"{self.url}/healthz", self.proc)
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        if self.proc is not None:
            embedded.stop_process(self.proc)

    def kill(self) -> None:
        if self.proc is not None:
            embedded.stop_process(self.proc, sig=signal.SIGKILL)


class Stack:
    """PostgreSQL, Redis, ``api_instances`` api roles and ``gateway_instances`` gateways.

    Gateway *i* forwards to api *i mod api_instances* (in a cluster a Service
    balances; here each gateway has one upstream). Servers passed in are used
    and left running; servers the stack starts, it stops.
    """

    def __init__(
        self,
        api: model.CachedApi,
        *,
        gateway_port: int = 0,
        api_key: str | None = None,
        api_instances: int = 1,
        gateway_instances: int = 1,
        postgres: embedded.PostgresServer | None = None,
        redis: embedded.RedisServer | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.api = api
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.workdir = Path(tempfile.mkdtemp(prefix="cachedapi-dev-"))
        self._own_pg = postgres is None
        self._own_redis = redis is None
        self.postgres = postgres or embedded.PostgresServer()
        self.redis = redis or embedded.RedisServer()
        self.config_path = self.workdir / contract.CONFIG_FILE
        self.config_path.write_text(contract.dump_config(x_config.render_config(api)), encoding="utf-8")
        base_env = {
            **os.environ,
            contract.ENV_CONFIG: str(self.config_path),
            contract.ENV_DATABASE_URL: self.postgres.url,
            contract.ENV_REDIS_URL: self.redis.url,
            contract.ENV_API_KEYS: self.api_key,
            **(extra_env or {}),
        }
        self.apis = [
            Instance(role="api", port=embedded.free_port(), env=base_env, log_path=self.workdir / f"api-{i}.log")
            for i in range(api_instances)
        ]
        self.gateways = []
        for i in range(gateway_instances):
            port = gateway_port if (i == 0 and gateway_port) else embedded.free_port()
            upstream = self.apis[i % api_instances].url
            env = {**base_env, contract.ENV_UPSTREAM_URL: upstream}
            self.gateways.append(
                Instance(role="gateway", port=port, env=env, log_path=self.workdir / f"gateway-{i}.log")
            )

    @property
    def url(self) -> str:
        """Where a client goes: the first gateway, or the first api role when there is none."""
        return (self.gateways or self.apis)[0].url

    def start(self) -> None:
        try:
            self.postgres.start()
            self.redis.start()
            for role in self.apis:
                role.start()
            for role in self.apis:
                assert role.proc is not None
                _wait_ready(f"{role.url}/readyz", role.proc)
            for role in self.gateways:
                role.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for role in [*self.gateways, *self.apis]:
            role.stop()
        if self._own_redis:
            self.redis.close()
        if self._own_pg:
            self.postgres.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self) -> str:
        """Every role's log, for a failing test to print."""
        out = []
        for path in sorted(self.workdir.glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    def dead_instances(self) -> list[Instance]:
        return [r for r in [*self.apis, *self.gateways] if r.proc is not None and r.proc.poll() is not None]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _pick(apis: list[model.CachedApi], name: str | None) -> model.CachedApi:
    if name is None:
        if len(apis) > 1:
            names = ", ".join(a.metadata.name for a in apis)
            raise model.ManifestError(f"the file holds several CachedApis ({names}): choose one with --name")
        return apis[0]
    for api in apis:
        if api.metadata.name == name:
            return api
    raise model.ManifestError(f"no CachedApi named {name!r} in the file")


def main(args: argparse.Namespace) -> int:
    try:
        api = _pick(model.load_manifest(args.file), args.name)
    except (OSError, model.ManifestError) as exc:
        print(f"cachedapi dev: {exc}", file=sys.stderr)
        return 2
    if api.spec.api.image:
        print(
            f"cachedapi dev: {api.metadata.name} runs your own API image ({api.spec.api.image}), which this "
            f"command does not run: start your API yourself, then put the gateway in front of it with "
            f"'cachedapi dev --upstream http://127.0.0.1:<its port> {args.file}'",
            file=sys.stderr,
        )
        return 2
    if args.port:
        try:
            embedded.wait_for_port(args.port, timeout=0.01)
        except TimeoutError:
            pass
        else:
            print(f"cachedapi dev: port {args.port} is in use; choose another with --port", file=sys.stderr)
            return 2

    stack = Stack(api, gateway_port=args.port, api_key=args.api_key)

    def ready() -> None:
        first = api.spec.resources[0].name
        auth = api.spec.gateway.auth.mode
        print(
            json.dumps({"url": stack.url, "apiKey": stack.api_key if auth == "apiKey" else None}),
            flush=True,
        )
        print(f"\n  CachedApi {api.metadata.name} is serving at {stack.url}")
        if auth == "apiKey":
            print(f"  API key: {stack.api_key}")
            print(f"\n  curl -H 'X-API-Key: {stack.api_key}' {stack.url}/v1/{first}")
        elif auth == "none":
            print(f"\n  curl {stack.url}/v1/{first}")
        else:
            print("  auth mode is jwt: send 'Authorization: Bearer <token>'")
        print(f"  docs: {stack.url}/docs   metrics: {stack.url}/metrics   logs: {stack.workdir}")
        print("\n  Ctrl-C stops everything.", flush=True)

    return run_until_stopped(
        stack, starting="cachedapi dev: starting PostgreSQL, Redis, the api role and the gateway ...", ready=ready
    )


class Running(Protocol):
    """What ``run_until_stopped`` needs of a stack: ``Stack``, or ``upstream.UpstreamStack``."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def dead_instances(self) -> list[Instance]: ...
    def logs(self) -> str: ...


def run_until_stopped(stack: Running, *, starting: str, ready: Callable[[], None]) -> int:
    """Start ``stack``, print its banner (``ready``), and serve until Ctrl-C or SIGTERM (0) or until a
    role exits (1, with its log); whatever happens, every process it started is stopped."""
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        print(starting, flush=True)
        stack.start()
        ready()
        while not stopping:
            dead = stack.dead_instances()
            if dead:
                print(f"cachedapi dev: the {dead[0].role} role exited; its log:\n{stack.logs()}", file=sys.stderr)
                return 1
            time.sleep(0.2)
        print("cachedapi dev: stopping", flush=True)
        return 0
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"cachedapi dev: could not start: {exc}\n{stack.logs()}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()
