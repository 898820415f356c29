"""TLS to the external Redis and PostgreSQL: one place that says what the runtime trusts.

Both roles talk to Redis (``redisconn``) and the api role to PostgreSQL, each over TLS when the
CachedApi says so (``spec.cache.redis.external.tls``, ``spec.database.external.tls``). What is
trusted is decided here and nowhere else: certificate verification and the host name check are
always on (Python's and libpq's strictest settings, never loosened), against the CA bundle the
operator mounted from the user's Secret (``contract.ENV_REDIS_CA_FILE``,
``contract.ENV_DATABASE_CA_FILE``). A bundle that cannot be read or holds no certificate stops
the role at start with the setting named, rather than failing every connection later with a
vaguer error.

A certificate that does not verify is not an outage that passes: retrying cannot cure it.
``describe`` turns such an error into the sentence that ``/readyz`` and the log show
("certificate verify failed: Hostname mismatch, ..."), and ``is_refusal`` tells it from a
connection that merely broke.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
#: OpenSSL's X509_V_ERR_ codes for "no path to a trusted CA": unable to get the issuer (2),
#: self-signed leaf (18), self-signed in chain (19), no local issuer (20), no leaf signature (21).
_NOT_FROM_THIS_CA = frozenset({2, 18, 19, 20, 21})


def check_ca_file(path: str, *, setting: str) -> str:
    """``path`` when it is a readable PEM bundle with at least one certificate; else ValueError naming
    ``setting``."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{setting}: cannot read the CA bundle {path}: {exc.__class__.__name__}") from None
    if _PEM_CERTIFICATE not in text:
        raise ValueError(f"{setting}: {path} holds no PEM certificate ({_PEM_CERTIFICATE} ...)")
    return path


def client_context(ca_file: str | None, *, setting: str) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and host name against ``ca_file`` only
    (the system's CAs when None)."""
    if ca_file is not None:
        check_ca_file(ca_file, setting=setting)
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError as exc:
        raise ValueError(f"{setting}: {ca_file} is not a usable CA bundle: {describe(exc)}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # create_default_context's own: CERT_REQUIRED and check_hostname, which nothing here turns off.
    return context


def libpq_params(ca_file: str) -> dict[str, str]:
    """libpq's connection parameters for a server whose certificate must chain to ``ca_file`` and name
    the host connected to. They override whatever ``sslmode`` the URL says (nothing weaker remains)."""
    return {"sslmode": "verify-full", "sslrootcert": ca_file}


def is_refusal(exc: BaseException) -> bool:
    """Whether a failed TLS handshake is the server's certificate (or protocol) being refused, which
    only a change of configuration cures, rather than a connection cut during the handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    transient = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError, ssl.SSLWantReadError)
    return isinstance(exc, ssl.SSLError) and not isinstance(exc, transient)


def describe(exc: BaseException) -> str:
    """One line saying what went wrong in a TLS handshake, for a person."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = f"TLS certificate verify failed: {exc.verify_message or exc.reason}"
        if exc.verify_code in _NOT_FROM_THIS_CA:
            why += " (the server's certificate does not chain to the CA bundle given)"
        return why
    text = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc))
    if isinstance(exc, ssl.SSLError) and exc.reason in {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE"}:
        text += " (is the server speaking TLS on that port?)"
    return f"TLS handshake failed: {text}"
