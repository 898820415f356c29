"""The one module that talks to the Kubernetes API (kopf's own watching aside).

Why aiohttp and not a client library: kopf has no public client, and the
official ``kubernetes`` client is synchronous (a thread per call) and not a
dependency of the operator image; ``kubernetes_asyncio`` would be a second,
generated client of several megabytes for six verbs. aiohttp is already
kopf's own HTTP stack, so it adds nothing to install, runs on kopf's event
loop, and the operator needs only get, create, merge-patch, delete and an
Event on its few kinds. Credentials are kopf's: the login handler hands over
the ``ConnectionInfo`` that kopf uses for its watches (``Credentials`` here),
so both speak to the same server as the same identity, and a re-login of
kopf (say, a rotated service-account token) reaches this client too.

Writes are JSON merge patches (RFC 7396), which a real API server and the
emulator in the tests apply alike.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Credentials:
    """Where the API server is and how to prove who we are (kopf's ConnectionInfo, copied)."""

    server: str
    ca_path: str | None = None
    ca_data: str | bytes | None = None  # base64 of PEM, as in a kubeconfig
    insecure: bool = False
    scheme: str | None = None
    token: str | None = None
    username: str | None = None
    password: str | None = None
    certificate_path: str | None = None
    certificate_data: str | bytes | None = None
    private_key_path: str | None = None
    private_key_data: str | bytes | None = None
    #: A file the token is re-read from after a 401 (a service account's token, which the
    #: kubelet rotates; kopf re-logs in only when its own requests are refused).
    token_path: str | None = None


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str

    def path(self, namespace: str, *, name: str | None = None, subresource: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        path = f"{base}/namespaces/{namespace}/{self.plural}"
        if name is not None:
            path += f"/{name}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


CACHEDAPI = Kind("cachedapi.dev/v1alpha1", "CachedApi", "cachedapis")
EVENT = Kind("v1", "Event", "events")
SECRET = Kind("v1", "Secret", "secrets")
#: The kinds of child the operator creates, by ``kind``.
CHILD_KINDS = {
    k.kind: k
    for k in (
        Kind("apps/v1", "Deployment", "deployments"),
        Kind("apps/v1", "StatefulSet", "statefulsets"),
        Kind("v1", "Service", "services"),
        Kind("v1", "ConfigMap", "configmaps"),
        SECRET,
        Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
        Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
        Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
    )
}


def kind_of(obj: dict[str, Any]) -> Kind:
    return CHILD_KINDS[obj["kind"]]


class ApiError(Exception):
    """An answer of the API server other than success (404 is None from ``get``).

    ``status`` 0 is no answer at all (unreachable, timed out). ``retry_after`` is the
    server's own ``Retry-After`` (seconds), when it sent one with a 429 or 503.
    """

    #: An operational failure, logged without a traceback (see ``scheduler``).
    expected = True

    def __init__(self, *, status: int, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    @property
    def unavailable(self) -> bool:
        """The server, not the request, is the problem (overloaded, failing, unreachable): any
        other write now would meet the same answer, so the caller should stop and come back later."""
        return self.status == 0 or self.status == 429 or self.status >= 500


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is not used by the API server)."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds <= 3600 else None


class ApiServer:
    """The Kubernetes API server, as the operator talks to it. ``login`` may be called again at any time
    with new credentials."""

    def __init__(self) -> None:
        self._credentials: Credentials | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ready = asyncio.Event()
        self._tempdir = tempfile.TemporaryDirectory(prefix="cachedapi-operator-")
        #: Every write sent (for logs and the scale benchmark's sanity): method -> count.
        self.writes: dict[str, int] = {}
        #: Writes the server accepted (tells a struggling server from a dead one).
        self.accepted = 0

    async def login(self, credentials: Credentials) -> None:
        if credentials == self._credentials and self._session is not None:
            return
        old, self._session = self._session, self._new_session(credentials)
        self._credentials = credentials
        self._ready.set()
        if old is not None:
            await old.close()

    def _new_session(self, creds: Credentials) -> aiohttp.ClientSession:
        headers = {"Accept": "application/json", "User-Agent": "cachedapi-operator"}
        auth = None
        if creds.token:
            headers["Authorization"] = f"{creds.scheme or 'Bearer'} {creds.token}"
        elif creds.username and creds.password:
            auth = aiohttp.BasicAuth(creds.username, creds.password)
        connector = aiohttp.TCPConnector(ssl=self._ssl_context(creds), limit=32)
        return aiohttp.ClientSession(
            base_url=creds.server.rstrip("/") + "/",
            headers=headers,
            auth=auth,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=30, connect=10),
        )

    def _materialise(self, name: str, data: str | bytes) -> str:
        raw = base64.b64decode(data)
        path = Path(self._tempdir.name) / name
        path.write_bytes(raw)
        path.chmod(0o600)
        return str(path)

    def _ssl_context(self, creds: Credentials) -> ssl.SSLContext | bool:
        if not creds.server.startswith("https"):
            return False
        ctx = ssl.create_default_context()
        if creds.ca_path:
            ctx.load_verify_locations(cafile=creds.ca_path)
        elif creds.ca_data:
            ctx.load_verify_locations(cadata=base64.b64decode(creds.ca_data).decode())
        if creds.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        cert = creds.certificate_path
        if creds.certificate_data:
            cert = self._materialise("client.crt", creds.certificate_data)
        key = creds.private_key_path
        if creds.private_key_data:
            key = self._materialise("client.key", creds.private_key_data)
        if cert:
            ctx.load_cert_chain(cert, key)
        return ctx

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._tempdir.cleanup()

    async def _refresh_token(self) -> bool:
        """Re-read a rotated token; True when it changed (then the request is worth repeating)."""
        creds = self._credentials
        if creds is None or not creds.token_path:
            return False
        try:
            token = (await asyncio.to_thread(Path(creds.token_path).read_text, encoding="utf-8")).strip()
        except OSError:
            return False
        if not token or token == creds.token:
            return False
        await self.login(dataclasses.replace(creds, token=token))
        return True

    async def _request(self, method: str, path: str, *, body: Any = None, content_type: str = "") -> Any:
        for attempt in (1, 2):
            try:
                return await self._request_once(method, path, body=body, content_type=content_type)
            except ApiError as exc:
                if exc.status != 401 or attempt == 2 or not await self._refresh_token():
                    raise
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ApiError(status=0, reason="Unreachable", message=f"{method} {path}: {exc!r}") from exc
        raise AssertionError("unreachable")

    async def _request_once(self, method: str, path: str, *, body: Any, content_type: str) -> Any:
        await self._ready.wait()
        assert self._session is not None
        headers = {"Content-Type": content_type} if content_type else {}
        data = json.dumps(body) if body is not None else None
        if method != "GET":
            self.writes[method] = self.writes.get(method, 0) + 1
        async with self._session.request(method, path.lstrip("/"), data=data, headers=headers) as response:
            text = await response.text()
            if response.status >= 400:
                try:
                    status = json.loads(text)
                    reason, message = str(status.get("reason", "")), str(status.get("message", text))
                except ValueError:
                    reason, message = response.reason or "", text[:500]
                raise ApiError(
                    status=response.status,
                    reason=reason,
                    message=message,
                    retry_after=_retry_after(response.headers.get("Retry-After")),
                )
            if method != "GET":
                self.accepted += 1
            return json.loads(text) if text else None

    async def get(self, kind: Kind, *, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self._request("GET", kind.path(namespace, name=name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create ``obj``; None when it already exists (409), which callers treat as existing."""
        kind = kind_of(obj)
        try:
            result: dict[str, Any] = await self._request(
                "POST", kind.path(obj["metadata"]["namespace"]), body=obj, content_type="application/json"
            )
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise
        return result

    async def patch(
        self, kind: Kind, *, namespace: str, name: str, body: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "PATCH",
            kind.path(namespace, name=name, subresource=subresource),
            body=body,
            content_type="application/merge-patch+json",
        )
        return result

    async def delete(self, kind: Kind, *, namespace: str, name: str) -> None:
        try:
            await self._request("DELETE", kind.path(namespace, name=name) + "?propagationPolicy=Background")
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def post_event(self, event: dict[str, Any]) -> None:
        """Events are best-effort: a failure to post one is logged, never raised."""
        try:
            await self._request(
                "POST", EVENT.path(event["metadata"]["namespace"]), body=event, content_type="application/json"
            )
        except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("could not post an Event: %s", exc)
