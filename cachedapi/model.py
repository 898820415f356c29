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


class Gateway(_Model):
    replicas: Annotated[int, Field(ge=0, le=1000)] = 2
    auth: Auth = Field(default_factory=Auth)
    rateLimit: RateLimit = Field(default_factory=RateLimit)
    service: Service = Field(default_factory=Service)
    autoscaling: Autoscaling | None = None
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)


class Api(_Model):
    replicas: Annotated[int, Field(ge=0, le=1000)] = 3
    autoscaling: Autoscaling | None = None
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)


class ManagedRedis(_Model):
    maxMemory: Quantity = "256Mi"
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)


class ExternalStore(_Model):
    """A server the user runs; its URL is read from a Secret."""

    urlSecretRef: SecretKeySelector


class _ManagedOrExternal(_Model):
    """Exactly one of ``managed`` or ``external``; managed (with its defaults) when neither is given."""

    managed: _Model | None = None
    external: ExternalStore | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_managed(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("managed") and not data.get("external"):
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


class Cache(_Model):
    defaultTtlSeconds: Annotated[int, Field(ge=0, le=MAX_SECONDS)] = 60
    staleWhileRevalidateSeconds: Annotated[int, Field(ge=0, le=MAX_SECONDS)] = 30
    staleIfErrorSeconds: Annotated[int, Field(ge=0, le=MAX_SECONDS)] = 300
    redis: Redis = Field(default_factory=lambda: Redis(managed=ManagedRedis()))


class ManagedDatabase(_Model):
    storage: Quantity = "1Gi"
    storageClassName: str = ""
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)


class Database(_ManagedOrExternal):
    """Exactly one of managed or external; managed when neither is given."""

    managed: ManagedDatabase | None = None


class ResourceDef(_Model):
    """One collection served under ``/v1/{name}``."""

    name: Annotated[str, StringConstraints(pattern=RESOURCE_NAME_PATTERN)]
    ttlSeconds: Annotated[int, Field(ge=0, le=MAX_SECONDS)] | None = None
    schema_: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"},
        alias="schema",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

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

    def effective_ttl(self, cache: Cache) -> int:
        return cache.defaultTtlSeconds if self.ttlSeconds is None else self.ttlSeconds


class CachedApiSpec(_Model):
    image: str = ""
    gateway: Gateway = Field(default_factory=Gateway)
    api: Api = Field(default_factory=Api)
    cache: Cache = Field(default_factory=Cache)
    database: Database = Field(default_factory=lambda: Database(managed=ManagedDatabase()))
    resources: Annotated[list[ResourceDef], Field(min_length=1, max_length=100)]

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
