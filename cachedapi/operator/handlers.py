"""The kopf handlers: the only module that imports kopf.

Why these handlers and not ``@kopf.on.create/update/resume`` and a timer:
kopf's change-detecting handlers persist their progress and a "last handled"
copy of the spec in annotations, and its timers put a finalizer on every
object; each is a write. Here kopf does what it is best at, watching and
indexing, and nothing else:

- ``@kopf.index`` keeps the CachedApis and every kind of child in memory,
  kept current by kopf's watches; kopf holds all handlers back until every
  index has been listed once, so a restarted operator never mistakes an
  existing child for a missing one;
- ``@kopf.on.event`` (kopf's silent, stateless spy handlers) asks for a
  reconcile of the CachedApi on any event of it or of a child it owns;
- a resync task asks for a reconcile of every CachedApi each
  ``CACHEDAPI_RESYNC_SECONDS`` (default 60): the periodic timer, which also
  paces the retries of an invalid spec.

So kopf writes nothing to the objects: no finalizer, no annotation, and no
Event (posting is switched off; the reconciler posts its own Events, on
transitions only). Deleting a CachedApi is never blocked by the operator:
owner references do the clean-up.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import kopf

from cachedapi import model
from cachedapi.operator import controller, kube
from cachedapi.operator.children import names

logger = logging.getLogger(__name__)

ENV_RESYNC_SECONDS = "CACHEDAPI_RESYNC_SECONDS"
ENV_RETRY_SECONDS = "CACHEDAPI_RETRY_SECONDS"

OWNED = {names.LABEL_MANAGED_BY: names.MANAGER}
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def _group_version(kind: kube.Kind) -> tuple[str, str]:
    if "/" in kind.api_version:
        group, version = kind.api_version.split("/", 1)
        return group, version
    return "", kind.api_version


#: Kept out of the indexes: never read by a reconcile, and most of an object's size
#: (``managedFields`` alone is often half of a Deployment; kubectl's copy is the whole object again).
_UNREAD_METADATA = ("managedFields",)
_UNREAD_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def _snapshot(body: kopf.Body) -> dict[str, Any]:
    """A plain copy, less what no reconcile reads (kopf's body views change under our feet as
    new events arrive, and the indexes hold one copy of every CachedApi and every child)."""
    meta = dict(body.get("metadata") or {})
    for key in _UNREAD_METADATA:
        meta.pop(key, None)
    annotations = meta.get("annotations")
    if annotations and any(a in annotations for a in _UNREAD_ANNOTATIONS):
        meta["annotations"] = {k: v for k, v in annotations.items() if k not in _UNREAD_ANNOTATIONS}
    return copy.deepcopy({**dict(body), "metadata": meta})


class _NoDiffBase(kopf.DiffBaseStorage):
    """No "essence" of objects: kopf builds one (a deep copy of the body) on every watch event, for
    change-detecting handlers (``on.create``/``on.update``), and this operator has none; on a
    hundred new CachedApis that was a tenth of its CPU. Nothing is stored on the objects."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    settings.posting.enabled = False  # kopf's own Events: none (ours are posted on transitions)
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 600
    op: controller.Controller = memo["operator"]
    op.start({name: kwargs[name] for name in kwargs if name in controller.index_names()})


@kopf.on.cleanup()
async def shut_down(memo: kopf.Memo, **_: Any) -> None:
    op: controller.Controller = memo["operator"]
    await op.stop()


@kopf.on.login()
async def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own logins, tried in-cluster first; the result is shared with ``kube.ApiServer``."""
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
    token_path = SERVICE_ACCOUNT_TOKEN if info is not None else None
    if info is None:
        fallback: Callable[..., kopf.ConnectionInfo | None]
        try:
            import kubernetes  # noqa: F401  (optional: understands exec plugins and auth providers)
        except ImportError:
            fallback = kopf.login_with_kubeconfig
        else:
            fallback = kopf.login_via_client
        try:
            info = fallback(**kwargs)
        except (kopf.LoginError, OSError, KeyError) as exc:
            logger.error("no usable credentials: %s", exc)
            info = None  # nothing to log in with: kopf stops the operator with a clear message
    if info is None:
        return None
    op: controller.Controller = memo["operator"]

    def text(value: Any) -> str | None:
        return None if value is None else os.fsdecode(value)

    await op.api_server.login(
        kube.Credentials(
            server=info.server,
            ca_path=text(info.ca_path),
            ca_data=info.ca_data,
            insecure=bool(info.insecure),
            scheme=info.scheme,
            token=info.token,
            username=info.username,
            password=info.password,
            certificate_path=text(info.certificate_path),
            certificate_data=info.certificate_data,
            private_key_path=text(info.private_key_path),
            private_key_data=info.private_key_data,
            token_path=token_path,
        )
    )
    return info


@kopf.index(model.API_GROUP, model.API_VERSION, model.PLURAL, id=controller.OWNER_INDEX)
async def index_cachedapi(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace or "default", name): _snapshot(body)}


@kopf.on.event(model.API_GROUP, model.API_VERSION, model.PLURAL, id="cachedapi-event")
async def on_cachedapi(*, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    memo["operator"].request((namespace or "default", name))


def _register_child(kind: kube.Kind) -> None:
    group, version = _group_version(kind)

    async def index_child(
        *, namespace: str | None, name: str, labels: kopf.Labels, body: kopf.Body, **_: Any
    ) -> dict[Any, Any]:
        owner = labels.get(names.LABEL_INSTANCE)
        return {(namespace, owner): (kind.kind, name, _snapshot(body))} if owner else {}

    async def on_child(*, namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
        owner = labels.get(names.LABEL_INSTANCE)
        if owner:
            memo["operator"].request((namespace, owner))

    index_id = controller.CHILD_INDEX.format(plural=kind.plural)
    kopf.index(group, version, kind.plural, labels=OWNED, id=index_id)(index_child)
    kopf.on.event(group, version, kind.plural, labels=OWNED, id=f"{kind.plural}-event")(on_child)


for _kind in controller.WATCHED:
    _register_child(_kind)


def run(*, namespaces: list[str], liveness_endpoint: str | None, resync_seconds: float, retry_seconds: float) -> int:
    """Run the operator until it is told to stop (SIGINT/SIGTERM); the exit status."""
    operator = controller.Controller(resync_seconds=resync_seconds, retry_seconds=retry_seconds)
    try:
        kopf.run(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness_endpoint,
            memo=kopf.Memo(operator=operator),
        )
    except kopf.LoginError as exc:
        print(f"cachedapi operator: cannot reach a cluster: {exc}", file=sys.stderr)
        return 1
    return 0
