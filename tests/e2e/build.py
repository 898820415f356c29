"""Build the e2e control plane from the upstream Go modules, once per version, cached.

What is built: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
kubectl from the small Go module in ``controlplane/`` (the upstream mains,
pinned to one Kubernetes release), and kwok (``go install`` at a pinned
version), which makes a fake node whose pods become Running and Ready.

Where: ``$XDG_CACHE_HOME/cachedapi-e2e`` (``~/.cache/cachedapi-e2e``), never the
repository. The directory's name carries a digest of everything that decides
the binaries (the Go module's files, the versions, the Go version), so a
change to any of them builds again and an unchanged one costs nothing. A build
goes to a temporary directory and is renamed into place when complete, so an
interrupted build never leaves a half-filled cache behind.

Cold, this takes 15-30 minutes on two cores (the Kubernetes modules are large);
warm (Go's own build cache kept), a minute or two; cached, nothing.

``python -m tests.e2e.build`` builds and prints where the binaries are.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: The Kubernetes release the control plane is built from (the staging modules are v0.<minor>.<patch>).
KUBERNETES_VERSION = "v1.36.3"
#: kwok's release; its module also carries the Stage definitions (``kustomize/stage``).
KWOK_VERSION = "v0.8.0"
KWOK_MODULE = "sigs.k8s.io/kwok"

MODULE_DIR = Path(__file__).resolve().parent / "controlplane"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cachedapi-e2e"


@dataclass(frozen=True)
class Binaries:
    """Where each built program is, and kwok's Stage definitions."""

    bin_dir: Path
    kwok_stages: Path

    def path(self, name: str) -> str:
        return str(self.bin_dir / name)


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("the e2e control plane is built with Go (1.26 or newer), and `go` is not on PATH")
    return go


def _go_version() -> str:
    return subprocess.run([_go(), "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()


def _digest() -> str:
    digest = hashlib.sha256()
    digest.update(f"{KUBERNETES_VERSION} {KWOK_VERSION} {_go_version()}\n".encode())
    for path in sorted(MODULE_DIR.rglob("*")):
        if path.is_file() and path.suffix in {".go", ".mod", ".sum"}:
            digest.update(str(path.relative_to(MODULE_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _ldflags() -> str:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    prefix = "-X k8s.io/component-base/version."
    # Without these, every component reports v0.0.0 (and kubectl warns about the skew).
    flags = [
        f"{prefix}gitVersion={KUBERNETES_VERSION}",
        f"{prefix}gitMajor={major}",
        f"{prefix}gitMinor={minor}",
        f"{prefix}gitTreeState=clean",
        f"{prefix}buildDate=1970-01-01T00:00:00Z",
    ]
    return "-s -w " + " ".join(flags)


def _run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, check=True)


def _module_dir(module: str, version: str) -> Path:
    done = subprocess.run(
        [_go(), "mod", "download", "-json", f"{module}@{version}"], capture_output=True, text=True, check=True
    )
    for line in done.stdout.splitlines():
        key, _, value = line.strip().partition(":")
        if key == '"Dir"':
            return Path(value.strip().strip(",").strip('"'))
    raise RuntimeError(f"go mod download {module}@{version} named no directory")


def ensure(*, quiet: bool = False) -> Binaries:
    """The binaries, built first if this version is not cached yet."""
    target = cache_root() / f"k8s-{KUBERNETES_VERSION}-kwok-{KWOK_VERSION}-{_digest()}"
    stages = _module_dir(KWOK_MODULE, KWOK_VERSION) / "kustomize" / "stage"
    if (target / "bin" / "kwok").exists():
        return Binaries(bin_dir=target / "bin", kwok_stages=stages)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if not quiet:
        print(f"building the control plane ({KUBERNETES_VERSION}) and kwok ({KWOK_VERSION}) into {target}; "
              "15-30 min the first time", file=sys.stderr, flush=True)  # fmt: skip
    building = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
    try:
        out = building / "bin"
        out.mkdir()
        env = {"CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}
        _run(
            [_go(), "build", "-trimpath", "-ldflags", _ldflags(), "-o", str(out) + "/", "./..."],
            cwd=MODULE_DIR,
            env=env,
        )
        _run([_go(), "install", "-trimpath", f"{KWOK_MODULE}/cmd/kwok@{KWOK_VERSION}"], env={**env, "GOBIN": str(out)})
        missing = [name for name in (*COMPONENTS, "kwok") if not (out / name).exists()]
        if missing:
            raise RuntimeError(f"the build made no {', '.join(missing)}")
        shutil.rmtree(target, ignore_errors=True)
        os.rename(building, target)
    finally:
        shutil.rmtree(building, ignore_errors=True)  # gone already when the build succeeded
    if not quiet:
        print(f"built in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return Binaries(bin_dir=target / "bin", kwok_stages=stages)


def main() -> int:
    binaries = ensure()
    print(binaries.bin_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
