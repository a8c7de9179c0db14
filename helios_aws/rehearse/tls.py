"""Certificates for the rehearsal: a local certificate authority, and pebble, a small
ACME server that issues certificates the way Let's Encrypt does (every authorization
valid at once), reachable from this machine or from a VM guest."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .processes import LOOPBACK, Process, free_port, run


@dataclass(frozen=True)
class IssuedCert:
    """PEM files of a certificate: cert (leaf only), key, fullchain (leaf then CA) and
    ca (the CA to trust; for a self-signed certificate, the certificate itself)."""

    cert: Path
    key: Path
    fullchain: Path
    ca: Path


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _build_cert(subject_cn: str, key, issuer, issuer_key, days: int, *, ca: bool,
                names: Sequence[str] = (), ips: Sequence[str] = ()):
    """A certificate for key, valid until now + days (negative: already expired)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = now + datetime.timedelta(days=days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, not_after) - datetime.timedelta(days=1))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            (issuer_key or key).public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name) for name in names]
                + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
            ),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


class LocalCA:
    """A certificate authority of its own in directory, issuing server certificates."""

    def __init__(self, directory: Path, name: str = "helios-aws test CA"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = _new_key()
        self._cert = _build_cert(name, self._key, None, None, 3650, ca=True)
        self.ca_file = self.directory / "ca.pem"
        self.ca_file.write_bytes(_pem(self._cert))

    def issue(self, name: str, *, days: int = 90, ips: Sequence[str] = (LOOPBACK,),
              extra_names: Sequence[str] = ()) -> IssuedCert:
        """A certificate for DNS name (plus extra_names and ips) valid for days from now.
        Each call writes new files in a fresh subdirectory."""
        target = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.directory))
        key = _new_key()
        cert = _build_cert(name, key, self._cert.subject, self._key, days, ca=False,
                           names=[name, *extra_names], ips=ips)
        return _write_cert_files(target, cert, key, self.ca_file, _pem(self._cert))


def _write_cert_files(target: Path, cert, key, ca_file: Path, chain: bytes) -> IssuedCert:
    files = IssuedCert(target / "cert.pem", target / "key.pem", target / "fullchain.pem",
                       ca_file)
    files.cert.write_bytes(_pem(cert))
    files.fullchain.write_bytes(_pem(cert) + chain)
    _write_key(key, files.key)
    return files


def self_signed_cert(directory: Path, name: str, *, days: int = 90,
                     ips: Sequence[str] = (LOOPBACK,)) -> IssuedCert:
    """A self-signed certificate for DNS name and ips, valid for days from now."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    key = _new_key()
    cert = _build_cert(name, key, None, None, days, ca=False, names=[name], ips=ips)
    return _write_cert_files(target, cert, key, target / "cert.pem", b"")


class Pebble:
    """pebble, a small ACME server, with every authorization valid at once.

    directory_url is https://localhost:PORT/dir; ca_bundle is the CA file that its HTTPS
    certificate chains to (the ACME API's, not the issued certificates')."""

    def __init__(self, directory: Path, ca: LocalCA):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        tls = ca.issue("localhost")
        self.ca_bundle = tls.ca
        self.port = free_port()
        self.management_port = free_port()
        config = self.directory / "pebble-config.json"
        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"{LOOPBACK}:{self.port}",
            "managementListenAddress": f"{LOOPBACK}:{self.management_port}",
            "certificate": str(tls.fullchain),
            "privateKey": str(tls.key),
            "httpPort": free_port(),
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }}))
        self.directory_url = f"https://localhost:{self.port}/dir"
        env = dict(os.environ, PEBBLE_VA_ALWAYS_VALID="1", PEBBLE_VA_NOSLEEP="1",
                   PEBBLE_WFE_NONCEREJECT="0")
        self.process = Process(["pebble", "-config", config], self.directory / "pebble.log",
                               env=env, cwd=self.directory)
        self.process.wait_for_port(LOOPBACK, self.port)
        self.process.wait_for_port(LOOPBACK, self.management_port)

    def certbot_certonly(self, domain: str, webroot: Path, workdir: Path) -> Path:
        """Have certbot get a certificate for domain from this server (webroot
        authenticator); returns certbot's live directory (fullchain.pem, privkey.pem)."""
        workdir = Path(workdir)
        Path(webroot).mkdir(parents=True, exist_ok=True)
        run(["certbot", "certonly", "-n", "--agree-tos",
             "--register-unsafely-without-email", "--server", self.directory_url,
             "--no-verify-ssl", "--config-dir", workdir / "config",
             "--work-dir", workdir / "work", "--logs-dir", workdir / "logs",
             "--webroot", "-w", webroot, "-d", domain], timeout=120)
        return workdir / "config" / "live" / domain

    def stop(self) -> None:
        self.process.stop()


class GuestPebble:
    """pebble on this machine as the guest sees it: at 10.0.2.2 (qemu's address for the
    host, which reaches 127.0.0.1 here), with a TLS certificate valid for that address.
    Every authorization is valid at once, so the guest's domain need not resolve."""

    def __init__(self, directory: Path, ca: LocalCA):
        directory.mkdir(parents=True, exist_ok=True)
        tls = ca.issue("localhost", ips=(LOOPBACK, "10.0.2.2"))
        self.api_ca = tls.ca
        self.port, self.management_port = free_port(), free_port()
        config = directory / "pebble-config.json"
        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"{LOOPBACK}:{self.port}",
            "managementListenAddress": f"{LOOPBACK}:{self.management_port}",
            "certificate": str(tls.fullchain), "privateKey": str(tls.key),
            "httpPort": free_port(), "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }}))
        self.directory_url = f"https://10.0.2.2:{self.port}/dir"
        env = {"PEBBLE_VA_ALWAYS_VALID": "1", "PEBBLE_VA_NOSLEEP": "1",
               "PEBBLE_WFE_NONCEREJECT": "0", "PATH": "/usr/bin:/bin"}
        self.process = Process(["pebble", "-config", config], directory / "pebble.log",
                               env=env, cwd=directory)
        self.process.wait_for_port(LOOPBACK, self.port)
        self.process.wait_for_port(LOOPBACK, self.management_port)

    def issuing_root(self) -> str:
        """The root that pebble's issued certificates chain to (PEM)."""
        context = ssl.create_default_context(cafile=str(self.api_ca))
        context.check_hostname = False
        url = f"https://{LOOPBACK}:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            return response.read().decode()

    def stop(self):
        self.process.stop()


LOCAL_CAS = Path("/usr/local/share/ca-certificates")


def guest_trust_bundle(path: Path, pebble: GuestPebble) -> Path:
    """What a VM guest must trust, as one PEM file: the guest pebble's API certificate,
    and what this machine trusts beyond the public roots (a TLS-inspecting proxy on the
    way to the package index, if any)."""
    local = sorted(LOCAL_CAS.rglob("*.crt")) if LOCAL_CAS.is_dir() else []
    path.write_text("".join(Path(p).read_text().strip() + "\n"
                            for p in [pebble.api_ca, *local]))
    return path
