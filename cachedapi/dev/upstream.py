"""``cachedapi dev --upstream URL``: the gateway, on an embedded Redis, in front of an HTTP API you run.

The gateway runs as the real ``cachedapi runtime --role gateway`` process, with the
configuration the operator would render for a CachedApi with ``spec.api.image`` (your
own API, upstream mode ``http``: a shared HTTP cache, RFC 9111), except that its
upstream is ``URL`` rather than the api Service. The manifest is optional and gives
the gateway and cache settings (``spec.gateway``, ``spec.cache.routes``, ...); without
one, the defaults of an empty spec: API-key auth with a generated key, the default
rate limit, and only what the upstream's ``Cache-Control`` says is cached.

No PostgreSQL and no api role are started, whatever the manifest's ``spec.database``
says: the API at ``URL`` is already running, with whatever database it has, and
nothing started here could hand it a URL. In a cluster the operator passes the
database's URL to your pods (``spec.api.databaseUrlEnv``); locally, your API is
configured by you. Every process started here is stopped by its pid in every outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from cachedapi import contract, model
from cachedapi.dev import devstack, embedded
from cachedapi.operator.children import config as x_config

#: ``spec.api.image`` when the manifest names none: the model takes a CachedApi as fronting
#: your own API only when it has an image, and locally the image is whatever runs at ``URL``.
LOCAL_IMAGE = "cachedapi-dev-upstream"
#: The name of the CachedApi when no manifest is given (its Redis keys start ``ca:default:dev``).
DEFAULT_NAME = "dev"
#: The label of the generated API key: what the gateway tells the upstream the caller is.
KEY_LABEL = "dev"


def check_url(url: str) -> str:
    """``url`` without a trailing slash; ValueError unless it is http(s) with a host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--upstream: an http:// or https:// URL with a host is needed, got {url!r}")
    return url.rstrip("/")


def _as_own_api(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with ``spec.api.image`` set if it has none (see ``LOCAL_IMAGE``)."""
    spec = dict(doc.get("spec") or {})
    api = dict(spec.get("api") or {})
    api.setdefault("image", LOCAL_IMAGE)
    spec["api"] = api
    return {**doc, "spec": spec}


def api_from(doc: dict[str, Any]) -> model.CachedApi:
    """One CachedApi document, validated as fronting your own API; ManifestError names each bad field."""
    return model.parse(_as_own_api(doc))


def default_api() -> model.CachedApi:
    """The CachedApi when no manifest is given: an empty spec in front of your own API, no database."""
    return api_from({"metadata": {"name": DEFAULT_NAME}, "spec": {"database": {"none": {}}}})


def load_api(path: str | None, name: str | None) -> model.CachedApi:
    """The CachedApi of the manifest (``name`` if it holds several), taken as fronting your own API:
    ``model.load_manifest``, with ``spec.api.image`` set where it is missing."""
    if path is None:
        return default_api()
    text = Path(path).read_text(encoding="utf-8")
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise model.ManifestError(f"{path}: not valid YAML: {exc}") from None
    apis = []
    for doc in docs:
        if not isinstance(doc, dict):
            raise model.ManifestError(f"{path}: every document must be a mapping")
        if doc.get("kind", model.KIND) != model.KIND:
            continue
        try:
            apis.append(api_from(doc))
        except model.ManifestError as exc:
            doc_name = (doc.get("metadata") or {}).get("name", "?")
            raise model.ManifestError(f"{path}: CachedApi {doc_name}: {exc}") from None
    if not apis:
        raise model.ManifestError(f"{path}: no CachedApi object found")
    return devstack._pick(apis, name)


def port_in_use(port: int) -> bool:
    try:
        embedded.wait_for_port(port, timeout=0.01)
    except TimeoutError:
        return False
    return True


def render_config(api: model.CachedApi, upstream_url: str) -> dict[str, Any]:
    """The gateway's configuration: the operator's rendering (``render_config``) for ``api``, whose
    upstream is ``upstream_url``. ValueError if it does not say upstream mode ``http`` with that URL."""
    data = x_config.render_config(api, upstream_url=upstream_url)
    config = contract.parse_config(data)
    if config.upstream_mode != contract.UPSTREAM_HTTP or config.upstream_url != upstream_url.rstrip("/"):
        raise ValueError(
            f"the rendered configuration says upstream {config.upstream_mode} at {config.upstream_url}, "
            f"not {contract.UPSTREAM_HTTP} at {upstream_url}"
        )
    return data


class UpstreamStack:
    """An embedded Redis and ``gateway_instances`` gateways in front of ``upstream_url``.

    A Redis passed in is used and left running; one the stack starts, it stops.
    """

    def __init__(
        self,
        api: model.CachedApi,
        *,
        upstream_url: str,
        gateway_port: int = 0,
        api_key: str | None = None,
        admin_key: str | None = None,
        gateway_instances: int = 1,
        redis: embedded.RedisServer | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.api = api
        self.upstream_url = check_url(upstream_url)
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.admin_key = admin_key or secrets.token_urlsafe(24)
        config = contract.dump_config(render_config(api, self.upstream_url))  # before any directory is made
        self.workdir = Path(tempfile.mkdtemp(prefix="cachedapi-dev-upstream-"))
        self._own_redis = redis is None
        self.redis = redis or embedded.RedisServer()
        self.config_path = self.workdir / contract.CONFIG_FILE
        self.config_path.write_text(config, encoding="utf-8")
        # A key directory, as the operator mounts a Secret: the file's name is the caller's label.
        keys = self.workdir / "api-keys"
        keys.mkdir()
        (keys / KEY_LABEL).write_text(self.api_key, encoding="utf-8")
        env = {
            **os.environ,
            contract.ENV_CONFIG: str(self.config_path),
            contract.ENV_REDIS_URL: self.redis.url,
            contract.ENV_UPSTREAM_URL: self.upstream_url,
            contract.ENV_API_KEYS_DIR: str(keys),
            contract.ENV_ADMIN_KEY: self.admin_key,
            **(extra_env or {}),
        }
        for setting in (contract.ENV_DATABASE_URL, contract.ENV_API_KEYS):
            env.pop(setting, None)  # none here; one from the caller's shell would mislead
        self.gateways = [
            devstack.Instance(
                role="gateway",
                port=gateway_port if (i == 0 and gateway_port) else embedded.free_port(),
                env=env,
                log_path=self.workdir / f"gateway-{i}.log",
            )
            for i in range(gateway_instances)
        ]

    @property
    def url(self) -> str:
        return self.gateways[0].url

    def start(self) -> None:
        try:
            self.redis.start()
            for role in self.gateways:
                role.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for role in self.gateways:
            role.stop()
        if self._own_redis:
            self.redis.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self) -> str:
        out = []
        for path in sorted(self.workdir.glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    def dead_instances(self) -> list[devstack.Instance]:
        return [r for r in self.gateways if r.proc is not None and r.proc.poll() is not None]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _example_path(api: model.CachedApi) -> str:
    """A path to show in the example: the first cache route's (its prefix), else ``/``."""
    for route in api.spec.cache.routes:
        return route.path.rstrip("*") or "/"
    return "/"


#: What ``contract.CALLER_HEADER`` says, by auth mode.
_WHO = {"apiKey": f"{KEY_LABEL!r} for the key above", "jwt": "the token's sub", "none": "empty: auth is none"}


def banner(stack: UpstreamStack) -> str:
    api, url = stack.api, stack.url
    auth = api.spec.gateway.auth.mode
    path = _example_path(api)
    lines = [
        json.dumps(
            {
                "url": url,
                "apiKey": stack.api_key if auth == "apiKey" else None,
                "adminKey": stack.admin_key,
                "upstream": stack.upstream_url,
            }
        ),
        "",
        f"  CachedApi {api.metadata.name} is serving {stack.upstream_url} at {url}, as a shared HTTP cache",
    ]
    if auth == "apiKey":
        lines += [f"  API key: {stack.api_key}", "", f"  curl -i -H 'X-API-Key: {stack.api_key}' {url}{path}"]
    elif auth == "none":
        lines += ["", f"  curl -i {url}{path}"]
    else:
        lines.append("  auth mode is jwt: send 'Authorization: Bearer <token>'")
    lines += [
        "  (X-Cache: MISS, then HIT for answers your API lets a shared cache keep: Cache-Control public,",
        "   max-age or s-maxage; spec.cache.routes for the ones that say nothing)",
        f"  your API gets who called in {contract.CALLER_HEADER} ({_WHO[auth]})",
        f"  and how in {contract.CALLER_AUTH_HEADER} ({auth})",
        f"  purge (admin key {stack.admin_key}):",
        f"  curl -X POST -H 'Authorization: Bearer {stack.admin_key}' -d '{{\"paths\": [\"{path}\"]}}' "
        f"{url}{contract.ADMIN_PURGE_PATH}",
        f"  metrics: {url}/metrics   logs: {stack.workdir}",
        "  no database and no api role: your API at the upstream URL has its own",
        "",
        "  Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    try:
        upstream_url = check_url(args.upstream)
        api = load_api(args.file, args.name)
        render_config(api, upstream_url)
    except (OSError, ValueError) as exc:  # ManifestError is a ValueError
        print(f"cachedapi dev: {exc}", file=sys.stderr)
        return 2
    if args.port and port_in_use(args.port):
        print(f"cachedapi dev: port {args.port} is in use; choose another with --port", file=sys.stderr)
        return 2

    stack = UpstreamStack(api, upstream_url=upstream_url, gateway_port=args.port, api_key=args.api_key)
    return devstack.run_until_stopped(
        stack,
        starting=f"cachedapi dev: starting Redis and the gateway in front of {upstream_url} ...",
        ready=lambda: print(banner(stack), flush=True),
    )
