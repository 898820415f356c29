"""The CachedApi resource, as one pydantic model.

Everything else is derived from this module: the runtime configuration that
the operator mounts (``contract``), the CRD's OpenAPI schema (``operator``),
and what ``cachedapi dev`` runs. Field names are the manifest's own camelCase
names so that an error's location reads exactly like the YAML a user wrote
(``spec.resources[1].ttlSeconds``).

Validation here covers what a schema can say (types, defaults, enums, bounds,
one-of rules); what needs a cluster (a Secret that must exist) is the
operator's job and is reported as ``SpecValid=False``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import jsonschema
import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from cachedapi import contract, listquery

API_GROUP = "cachedapi.dev"
API_VERSION = "v1alpha1"
KIND = "CachedApi"
PLURAL = "cachedapis"

#: The upper bound of every TTL-like field: a day. Bounded so that the cache's
#: generation tokens (see ``contract``) always outlive every entry.
MAX_SECONDS = 86_400

#: A Kubernetes resource quantity ("256Mi", "0.5", "500m", "1e3").
QUANTITY_PATTERN = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i?|[munkMGTPE])?$"
#: A DNS-1123 label, which every child object name is built from.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A resource collection name: it becomes a URL segment and a SQL table name.
RESOURCE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"

Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)]
DnsName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
SecretKey = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
#: An environment variable's name, as Kubernetes has long required it (a C identifier, dots and dashes).
EnvName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")]
#: An absolute URL path with no query or fragment.
HttpPath = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^/[^\s?#]*$")]
#: An HTTP header's name (an RFC 9110 token).
HeaderName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[-!#$%&'*+.^_`|~0-9A-Za-z]+$")]


class FieldError(ValueError):
    """A rule across fields, raised by a validator of the object that holds them: ``field`` is the
    path under that object (``api.databaseUrlEnv``), so that the message names the field as the
    YAML has it (``spec.api.databaseUrlEnv: ...``) rather than the object the rule sits on."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class _Model(BaseModel):
    """Strict by default: an unknown field is a typo, and a typo is an error."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class LocalObjectReference(_Model):
    """A Secret in the CachedApi's own namespace."""

    name: DnsName


class SecretKeySelector(_Model):
    """One key of a Secret in the CachedApi's own namespace."""

    name: DnsName
    key: SecretKey


class ResourceRequirements(_Model):
    """Container resources, as in a Pod spec."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)


class JwtAuth(_Model):
    """JWT validation: HS256 with a shared secret, or RS256/ES256 from a JWKS URL."""

    issuer: str | None = None
    audience: str | None = None
    jwksUrl: Annotated[str, StringConstraints(pattern=r"^https?://")] | None = None
    secretRef: SecretKeySelector | None = None

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtAuth:
        if (self.jwksUrl is None) == (self.secretRef is None):
            raise ValueError("exactly one of jwksUrl or secretRef must be set")
        return self


class Auth(_Model):
    """How the gateway authenticates clients."""

    mode: Literal["apiKey", "jwt", "none"] = "apiKey"
    apiKeysSecretRef: LocalObjectReference | None = None
    jwt: JwtAuth | None = None

    @model_validator(mode="after")
    def _jwt_when_asked(self) -> Auth:
        if self.mode == "jwt" and self.jwt is None:
            raise ValueError("jwt must be set when mode is jwt")
        return self


class RateLimit(_Model):
    """A GCRA limit shared by every gateway replica through Redis."""

    requestsPerSecond: Annotated[float, Field(gt=0, le=1_000_000)] = 100
    burst: Annotated[int, Field(ge=1, le=10_000_000)] = 200
    by: Literal["apiKey", "clientIP"] = "apiKey"


class Service(_Model):
    """How the gateway is exposed."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080


class Autoscaling(_Model):
    """A HorizontalPodAutoscaler for a Deployment."""

    minReplicas: Annotated[int, Field(ge=1, le=1000)] = 2
    maxReplicas: Annotated[int, Field(ge=1, le=1000)] = 10
    targetCPUUtilizationPercentage: Annotated[int, Field(ge=1, le=100)] = 70

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.minReplicas > self.maxReplicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        return self


class Timeouts(_Model):
    """How long a gateway waits for a client's request (README "Slow and idle clients")."""

    requestHeaderSeconds: Annotated[int, Field(ge=1, le=3600)] = Field(
        default=contract.DEFAULT_REQUEST_HEADER_SECONDS,
        description="From a connection being ready for a request (just opened, or idle after an answer) "
        "until that request's header is complete; then the connection is closed. It is also the idle "
        "keep-alive timeout: the HTTP server (granian, on hyper) has one timer for both.",
    )
    requestBodySeconds: Annotated[int, Field(ge=1, le=3600)] = Field(
        default=contract.DEFAULT_REQUEST_BODY_SECONDS,
        description="From the gateway starting to read a request body until it has all of it; then 408.",
    )


class Capacity(_Model):
    """What clients may hold of one gateway process at once."""

    maxConnections: Annotated[int, Field(ge=16, le=1_000_000)] = Field(
        default=contract.DEFAULT_MAX_CONNECTIONS,
        description="Connections one gateway process holds; further ones wait in the kernel's listen queue "
        "until one closes. About 14 KiB each while idle or slow, up to about 40 KiB with a large "
        "unfinished header: raise it together with the memory limit.",
    )
    maxForwardsPerClient: Annotated[int, Field(ge=0, le=1_000_000)] = Field(
        default=contract.DEFAULT_MAX_FORWARDS_PER_CLIENT,
        description="Requests of one client address that a gateway process works on beyond its cache at "
        "once (reading a body, or waiting for the api role); more are answered 503. 0: no cap. Behind a "
        "proxy every request has the proxy's address: raise it or set 0 there.",
    )


class Gateway(_Model):
    replicas: Annotated[int, Field(ge=0, le=1000)] = 2
    auth: Auth = Field(default_factory=Auth)
    rateLimit: RateLimit = Field(default_factory=RateLimit)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    capacity: Capacity = Field(default_factory=Capacity)
    service: Service = Field(default_factory=Service)
    autoscaling: Autoscaling | None = None
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)


class ConfigMapKeySelector(_Model):
    """One key of a ConfigMap in the CachedApi's own namespace."""

    name: DnsName
    key: SecretKey


class EnvVarSource(_Model):
    """Where an environment variable's value comes from: exactly one key of a Secret or a ConfigMap."""

    secretKeyRef: SecretKeySelector | None = None
    configMapKeyRef: ConfigMapKeySelector | None = None

    @model_validator(mode="after")
    def _one_source(self) -> EnvVarSource:
        if (self.secretKeyRef is None) == (self.configMapKeyRef is None):
            raise ValueError("exactly one of secretKeyRef or configMapKeyRef must be set")
        return self


class EnvVar(_Model):
    """An environment variable of the user's API container, as in a Pod spec: a value, or a
    reference to a key of a Secret or a ConfigMap (resolved by the kubelet, never copied)."""

    name: EnvName
    value: Annotated[str, StringConstraints(max_length=32_768)] | None = None
    valueFrom: EnvVarSource | None = None

    @model_validator(mode="after")
    def _value_or_reference(self) -> EnvVar:
        if self.value is not None and self.valueFrom is not None:
            raise ValueError("set value or valueFrom, not both")
        return self


class Probes(_Model):
    """HTTP GET paths on ``api.port`` that Kubernetes probes the user's API with; any answer from 200
    to 399 passes. Readiness takes a pod in and out of the gateway's Service; liveness restarts it."""

    readinessPath: HttpPath = "/"
    livenessPath: HttpPath = "/"


#: ``spec.api`` fields that mean something only for the user's own image (``api.image``).
_OWN_IMAGE_ONLY = ("command", "args", "env", "databaseUrlEnv", "redisUrlEnv", "forwardCredentials")


class Api(_Model):
    """The api tier: the bundled api role, or the user's own API when ``image`` is set (README
    "Your own API behind the gateway")."""

    replicas: Annotated[int, Field(ge=0, le=1000)] = 3
    autoscaling: Autoscaling | None = None
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    image: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^\s]+$")] | None = Field(
        default=None,
        description="The user's own API image: the api Deployment runs it instead of the bundled api role, "
        "and the gateway caches it as an HTTP cache (upstream mode http).",
    )
    port: Annotated[int, Field(ge=1, le=65535)] = Field(
        default=8080, description="The port the user's API listens on (with image only)."
    )
    command: Annotated[list[Annotated[str, StringConstraints(max_length=4096)]], Field(max_length=256)] | None = None
    args: Annotated[list[Annotated[str, StringConstraints(max_length=4096)]], Field(max_length=256)] | None = None
    env: Annotated[list[EnvVar], Field(max_length=200)] = Field(default_factory=list)
    probes: Probes = Field(default_factory=Probes)
    databaseUrlEnv: EnvName | None = Field(
        default=None,
        description="The environment variable in which the user's API gets the database URL, as a reference "
        "to the Secret that holds it; not set: not passed.",
    )
    redisUrlEnv: EnvName | None = Field(
        default=None,
        description="The environment variable in which the user's API gets the Redis URL (a reference to the "
        "Secret of an external Redis; the managed Redis's URL holds no credential); not set: not passed.",
    )
    forwardCredentials: bool = Field(
        default=False,
        description="Forward the caller's own credential (Authorization, X-API-Key) to the user's API too.",
    )

    @property
    def own_image(self) -> bool:
        """The user's own API runs instead of the bundled api role."""
        return self.image is not None

    @model_validator(mode="after")
    def _own_image_fields(self) -> Api:
        if self.image is None:
            for name in _OWN_IMAGE_ONLY:
                if getattr(self, name):
                    raise FieldError(name, "only with api.image (your own API); the bundled api role takes none")
            return self
        seen: dict[str, str] = {}
        for where, variable in (("databaseUrlEnv", self.databaseUrlEnv), ("redisUrlEnv", self.redisUrlEnv)):
            if variable is not None:
                if variable in seen:
                    raise FieldError(where, f"{variable!r} is already {seen[variable]}")
                seen[variable] = where
        for i, var in enumerate(self.env):
            if var.name in seen:
                raise FieldError(f"env[{i}].name", f"{var.name!r} is already {seen[var.name]}")
            seen[var.name] = f"env[{i}]"
        return self


class ManagedRedis(_Model):
    maxMemory: Quantity = "256Mi"
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)


class CaSecretKeySelector(SecretKeySelector):
    """The key of a Secret that holds a PEM CA bundle; ``ca.crt`` (cert-manager's, and a
    ``kubernetes.io/tls`` Secret's) unless told."""

    key: SecretKey = "ca.crt"


class ExternalTls(_Model):
    """How to trust an external server's TLS certificate: it must chain to this CA bundle and name
    the host of the URL. The runtime pods mount the bundle as a file; it is never in their spec."""

    caSecretRef: CaSecretKeySelector


class ExternalStore(_Model):
    """A server the user runs; its URL is read from a Secret.

    ``tls``: verify the server against a CA from a Secret: Redis then needs a ``rediss://`` URL,
    and PostgreSQL is connected to with ``sslmode=verify-full``. Without it, a ``rediss://`` URL
    is verified against the system's CAs (the image ships none) and PostgreSQL gets what the URL
    says.
    """

    urlSecretRef: SecretKeySelector
    tls: ExternalTls | None = None


class _ManagedOrExternal(_Model):
    """Exactly one of ``managed`` or ``external``; managed (with its defaults) when neither is given."""

    managed: _Model | None = None
    external: ExternalStore | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_managed(cls, data: Any) -> Any:
        if isinstance(data, dict) and not (data.get("managed") or data.get("external") or data.get("none") is not None):
            return {**data, "managed": {}}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if self.managed is not None and self.external is not None:
            raise ValueError("exactly one of managed or external must be set")
        return self


class Redis(_ManagedOrExternal):
    """Exactly one of managed or external; managed when neither is given."""

    managed: ManagedRedis | None = None


class CacheRoute(_Model):
    """How the gateway caches the answers of the user's own API to the paths that match ``path``
    (``contract.CacheRoute``, one to one); the first route that matches a path applies."""

    path: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^/[^*\s?#]*\*?$")] = Field(
        description="An exact path (/v1/status), or a prefix ending in * (/v1/products/*)."
    )
    ttlSeconds: Annotated[int, Field(ge=0, le=MAX_SECONDS)] | None = Field(
        default=None,
        description="Freshness of answers whose upstream says nothing about it (no max-age, s-maxage or "
        "Expires); 0: never cached; not set: only what the upstream says.",
    )
    varyHeaders: Annotated[list[HeaderName], Field(max_length=20)] = Field(
        default_factory=list, description="Request headers whose values select separate entries, beside Vary."
    )
    byCaller: bool = Field(
        default=False, description="Answers depend on the caller: kept per caller, never shared between callers."
    )

    def to_contract(self) -> contract.CacheRoute:
        return contract.CacheRoute(
            path=self.path,
            ttl_seconds=self.ttlSeconds,
            vary_headers=tuple(h.lower() for h in self.varyHeaders),
            by_caller=self.byCaller,
        )


class Cache(_Model):
    defaultTtlSeconds: Annotated[int, Field(ge=0, le=MAX_SECONDS)] = 60
    staleWhileRevalidateSeconds: Annotated[int, Field(ge=0, le=MAX_SECONDS)] = 30
    staleIfErrorSeconds: Annotated[int, Field(ge=0, le=MAX_SECONDS)] = 300
    redis: Redis = Field(default_factory=lambda: Redis(managed=ManagedRedis()))
    #: With ``api.image`` only: caching rules for the user's own API, by path.
    routes: Annotated[list[CacheRoute], Field(max_length=100)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _routes_once(self) -> Cache:
        seen: set[str] = set()
        for i, route in enumerate(self.routes):
            if route.path in seen:
                raise FieldError(f"routes[{i}].path", f"{route.path!r} is declared twice (the first one would apply)")
            seen.add(route.path)
        return self


class ManagedDatabase(_Model):
    storage: Quantity = "1Gi"
    storageClassName: str = ""
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)


class NoDatabase(_Model):
    """No database at all (``database: {none: {}}``): only for the user's own API (``api.image``)."""


class Database(_ManagedOrExternal):
    """Exactly one of managed, external or none; managed when none of them is given."""

    managed: ManagedDatabase | None = None
    none: NoDatabase | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if sum(x is not None for x in (self.managed, self.external, self.none)) > 1:
            raise ValueError("exactly one of managed, external or none must be set")
        return self


class IndexDef(_Model):
    """A PostgreSQL index for list queries, its keys spelled as in ``?sort=`` (``-`` descending).

    ``{keys: [author]}`` serves ``?author=...``; ``{keys: [-year, title]}`` serves
    ``?sort=-year,title`` and filters on ``year``. Every index ends with the insertion
    order, which breaks ties in every sort, so a sort on its keys needs no sort step.
    """

    keys: Annotated[
        list[Annotated[str, StringConstraints(pattern=r"^-?[A-Za-z_][A-Za-z0-9_.]*$")]],
        Field(min_length=1, max_length=listquery.MAX_SORT_KEYS),
    ]


class ResourceDef(_Model):
    """One collection served under ``/v1/{name}``."""

    name: Annotated[str, StringConstraints(pattern=RESOURCE_NAME_PATTERN)]
    ttlSeconds: Annotated[int, Field(ge=0, le=MAX_SECONDS)] | None = None
    #: Any caller may see this resource: its answers say ``public`` and a shared cache in front of
    #: the gateway (a CDN) may keep them and serve them to anyone, credentials or not. Otherwise
    #: answers to authenticated callers say ``private`` (README "What a CDN in front of the
    #: gateway may keep").
    public: bool = False
    schema_: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"},
        alias="schema",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    #: Indexes for the list queries worth making fast; the api role creates them without
    #: blocking writes and drops those removed from this list.
    indexes: Annotated[list[IndexDef], Field(max_length=10)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _schema_is_json_schema(self) -> ResourceDef:
        try:
            jsonschema.Draft202012Validator.check_schema(self.schema_)
        except jsonschema.SchemaError as exc:
            where = "/".join(str(p) for p in exc.path) or "(root)"
            raise ValueError(f"schema is not a valid JSON Schema at {where}: {exc.message}") from None
        if self.schema_.get("type", "object") != "object":
            raise ValueError("schema must describe an object (type: object)")
        return self

    @model_validator(mode="after")
    def _indexes_name_scalar_properties(self) -> ResourceDef:
        props = listquery.properties(self.schema_)
        seen: set[tuple[str, ...]] = set()
        for i, index in enumerate(self.indexes):
            names = [key.removeprefix("-") for key in index.keys]
            for j, name in enumerate(names):
                where = f"indexes[{i}].keys[{j}]"
                if name not in props:
                    raise ValueError(f"{where}: {name!r} is not a top-level property of the schema")
                if not props[name].types:
                    raise ValueError(f"{where}: {name!r} has no scalar type in the schema, so it cannot be indexed")
            if len(set(names)) != len(names):
                raise ValueError(f"indexes[{i}]: a property is named twice")
            if tuple(index.keys) in seen:
                raise ValueError(f"indexes[{i}]: the same index is declared twice")
            seen.add(tuple(index.keys))
        return self

    def effective_ttl(self, cache: Cache) -> int:
        return cache.defaultTtlSeconds if self.ttlSeconds is None else self.ttlSeconds


class CachedApiSpec(_Model):
    image: str = ""
    gateway: Gateway = Field(default_factory=Gateway)
    api: Api = Field(default_factory=Api)
    cache: Cache = Field(default_factory=Cache)
    database: Database = Field(default_factory=lambda: Database(managed=ManagedDatabase()))
    #: The bundled api role's collections: at least one with it, none needed with ``api.image``.
    resources: Annotated[list[ResourceDef], Field(max_length=100)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _bundled_or_own_api(self) -> CachedApiSpec:
        if not self.api.own_image:
            if not self.resources:
                raise FieldError("resources", "at least one resource is required (or api.image for your own API)")
            if self.database.none is not None:
                raise FieldError("database.none", "the bundled api role needs a database (none only with api.image)")
            if self.cache.routes:
                raise FieldError("cache.routes", "only with api.image (the bundled api role's caching is per resource)")
        elif self.database.none is not None and self.api.databaseUrlEnv is not None:
            raise FieldError("api.databaseUrlEnv", "there is no database to hand over (database.none)")
        return self

    @model_validator(mode="after")
    def _unique_resource_names(self) -> CachedApiSpec:
        seen: set[str] = set()
        for res in self.resources:
            if res.name in seen:
                raise ValueError(f"resource name {res.name!r} is declared twice")
            seen.add(res.name)
        return self

    def resource(self, name: str) -> ResourceDef | None:
        for res in self.resources:
            if res.name == name:
                return res
        return None


class ObjectMeta(BaseModel):
    """The part of metadata the project reads; the rest is kept, not checked."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: Annotated[str, StringConstraints(max_length=40, pattern=DNS_LABEL_PATTERN)]
    namespace: Annotated[str, StringConstraints(max_length=63, pattern=DNS_LABEL_PATTERN)] = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class CachedApi(_Model):
    """A whole CachedApi object as a user writes it (status is not part of it)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    apiVersion: Literal["cachedapi.dev/v1alpha1"] = "cachedapi.dev/v1alpha1"
    kind: Literal["CachedApi"] = "CachedApi"
    metadata: ObjectMeta
    spec: CachedApiSpec


class ManifestError(ValueError):
    """A manifest that is not a valid CachedApi; the message names each field."""


def format_errors(exc: pydantic.ValidationError) -> str:
    """Turn pydantic's errors into lines that name the field as the YAML has it."""
    lines = []
    for err in exc.errors():
        path = ""
        for part in err["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif part in {"function-after[_one_key_source()]", "function-after[_exactly_one()]"}:
                continue
            else:
                path += ("." if path else "") + str(part)
        message = re.sub(r"^Value error, ", "", err["msg"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            path, message = (f"{path}.{cause.field}" if path else cause.field), cause.message
        lines.append(f"{path or '(root)'}: {message}")
    return "; ".join(lines)


def parse(body: dict[str, Any]) -> CachedApi:
    """Validate one object; raises ManifestError naming every bad field."""
    try:
        return CachedApi.model_validate(body)
    except pydantic.ValidationError as exc:
        raise ManifestError(format_errors(exc)) from None


def parse_spec(spec: dict[str, Any]) -> CachedApiSpec:
    """Validate a spec alone (the operator's view); errors are prefixed ``spec.``."""
    try:
        return CachedApiSpec.model_validate(spec)
    except pydantic.ValidationError as exc:
        raise ManifestError("; ".join("spec." + line for line in format_errors(exc).split("; "))) from None


def load_manifest(path: str | Path) -> list[CachedApi]:
    """Every CachedApi in a YAML file (other kinds are skipped)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from None
    apis = []
    for doc in docs:
        if not isinstance(doc, dict):
            raise ManifestError(f"{path}: every document must be a mapping")
        if doc.get("kind", KIND) != KIND:
            continue
        try:
            apis.append(parse(doc))
        except ManifestError as exc:
            name = (doc.get("metadata") or {}).get("name", "?")
            raise ManifestError(f"{path}: CachedApi {name}: {exc}") from None
    if not apis:
        raise ManifestError(f"{path}: no CachedApi object found")
    return apis
