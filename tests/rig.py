"""Real local stand-ins for the test suite: AWS (moto), an SSH host, nginx, a local CA,
an ACME server (pebble), PostgreSQL, RabbitMQ and Redis.

Every component listens on loopback on a free port, keeps its data and its log in a
directory the caller gives, and is stopped by the caller (conftest.py does it). Processes
run in their own session and are killed with all their descendants on stop; they also get
SIGTERM if the test process dies without tearing down. The only system state touched is
the dedicated SSH test user, which sshd needs to exist.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
SSH_USER = "helios-aws-test"
SSHD = "/usr/sbin/sshd"
NGINX = "/usr/sbin/nginx"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


class RigError(RuntimeError):
    """A component could not be started, checked or stopped; the message says why."""


# ---------------------------------------------------------------------------- basics


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on host:port, or raise RigError."""
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() > deadline:
            raise RigError(f"nothing listens on {host}:{port} after {timeout:.0f} s")
        time.sleep(0.05)


def run(argv: Sequence[str | os.PathLike], **kwargs) -> subprocess.CompletedProcess:
    """Run a short command to completion; raise RigError with its output if it fails."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    result = subprocess.run(
        [str(arg) for arg in argv], capture_output=True, text=True, **kwargs
    )
    if result.returncode != 0:
        raise RigError(
            f"{' '.join(map(str, argv))} exited {result.returncode}\n"
            f"{result.stdout}{result.stderr}"
        )
    return result


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/pid/stat after the command name (state first)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def still_running(pid: int, start_time: str) -> bool:
    """Whether pid is the process that started at start_time and is not a zombie."""
    stat = _proc_stat(pid)
    return stat is not None and stat[19] == start_time and stat[0] != "Z"


def process_tree(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every live descendant of pid, including those that called
    setsid() (sshd's per-connection processes, postgres backends, Erlang's helpers)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        stat = _proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None and stat[0] != "Z":
            children.setdefault(int(stat[1]), []).append((int(entry.name), stat[19]))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child[0], []))
    return found


class Process:
    """A long-running subprocess with its output in a log file.

    It runs in a new session, under `setpriv --pdeathsig TERM` so that it ends if the
    test process dies, and `stop()` signals its process group, then kills whatever of
    its process tree is left.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
    ):
        self.argv = [str(arg) for arg in argv]
        self.log_path = Path(log_path)
        self.stop_signal = stop_signal
        self._stopped = False
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                ["setpriv", "--pdeathsig", "TERM", "--", *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                user=user,
                group=pwd.getpwnam(user).pw_gid if user else None,
                extra_groups=[] if user else None,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> RigError:
        status = "running" if self.running() else f"exited {self.popen.returncode}"
        return RigError(
            f"{what}: {self.argv[0]} ({status}); last lines of {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def wait_until(self, ready, what: str, timeout: float = 15.0) -> None:
        """Poll ready() until true; stop and raise with the log tail if the process
        exits first or the time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.running() or time.monotonic() > deadline:
                error = self.failure(f"{what} (after {timeout:.0f} s)")
                self.stop()
                raise error
            time.sleep(0.05)

    def wait_for_port(self, host: str, port: int, timeout: float = 15.0) -> None:
        self.wait_until(
            lambda: port_open(host, port), f"nothing listens on {host}:{port}", timeout
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        tree = process_tree(self.pid) if self.running() else []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, self.stop_signal)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait()
        left = [(pid, start) for pid, start in tree if still_running(pid, start)]
        for pid, _ in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(still_running(*proc) for proc in left) and time.monotonic() < deadline:
            time.sleep(0.01)

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


# ---------------------------------------------------------------------------- moto


def moto_request(url: str, method: str, path: str) -> bytes:
    """One plain HTTP request to the moto server at url (for its /moto-api/)."""
    parsed = http.client.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status >= 400:
        raise RigError(f"moto {method} {path}: HTTP {response.status}: {body[:500]!r}")
    return body


def moto_reset(url: str) -> None:
    """Forget every AWS resource the moto server at url holds."""
    moto_request(url, "POST", "/moto-api/reset")


def moto_data(url: str) -> dict:
    """Everything the moto server at url holds, e.g. ["ses"]["RawMessage"] for sent mail
    (this breaks once an RDS instance exists: reset first)."""
    return json.loads(moto_request(url, "GET", "/moto-api/data.json"))


class MotoServer:
    """moto in server mode, in a thread of this process, over real HTTP on loopback."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.stop()


def cloud_init_console(public_keys: Sequence[str],
                       host: str = "root@ip-172-31-22-10.ec2.internal") -> str:
    """The end of an EC2 serial console log as cloud-init writes it on first boot: the
    fingerprint block of the given host public keys ("ssh-ed25519 AAAA... comment"), then
    the keys themselves."""
    prefix = "<14>Nov 25 12:40:05 cloud-init:"
    lines = [
        "[    6.912345] cloud-init[1583]: Cloud-init v. 22.2.2 running 'init' at Wed, "
        "25 Nov 2026 12:40:02 +0000. Up 6.88 seconds.",
        "[    8.124010] cloud-init[1583]: Generating public/private ed25519 key pair.",
        f"{prefix} #############################################################",
        f"{prefix} -----BEGIN SSH HOST KEY FINGERPRINTS-----",
    ]
    for public in public_keys:
        bits, fingerprint, kind = ssh_keygen_fingerprint(public)
        lines.append(f"{prefix} {bits} {fingerprint} {host} ({kind})")
    lines += [
        f"{prefix} -----END SSH HOST KEY FINGERPRINTS-----",
        f"{prefix} #############################################################",
        "-----BEGIN SSH HOST KEY KEYS-----",
        *(" ".join(public.split()[:2]) + f" {host}" for public in public_keys),
        "-----END SSH HOST KEY KEYS-----",
        "[   10.503211] cloud-init[1702]: Cloud-init v. 22.2.2 finished at Wed, 25 Nov 2026 "
        "12:40:07 +0000. Datasource DataSourceEc2.  Up 10.49 seconds",
    ]
    return "\r\n".join(lines) + "\r\n"


def ssh_keygen_fingerprint(public_key: str) -> tuple[str, str, str]:
    """(bits, "SHA256:...", type such as "ED25519") as `ssh-keygen -lf` prints them."""
    listed = subprocess.run(["ssh-keygen", "-lf", "-"], input=public_key, text=True,
                            capture_output=True, check=True).stdout.split()
    return listed[0], listed[1], listed[-1].strip("()")


def serve_console_output(text: str) -> None:
    """Make the in-process moto server answer GetConsoleOutput with text (moto serves
    one fixed text for every instance)."""
    import moto.ec2.responses.general as console

    console.SAMPLE_CONSOLE_OUTPUT = text


def publish_public_parameter(name: str, value: str, region: str = "us-east-1",
                             account: str = "123456789012") -> None:
    """Add an AWS public SSM parameter (under /aws/service/, which the API refuses to
    create) to the in-process moto server: moto ships Amazon Linux's AMI parameters
    but not Debian's."""
    import datetime

    from moto.ssm.models import Parameter, ssm_backends

    ssm_backends[account][region]._parameters[name].append(Parameter(
        account_id=account, name=name, value=value, parameter_type="String",
        description=None, allowed_pattern=None, keyid=None,
        last_modified_date=datetime.datetime.now(datetime.timezone.utc), version=1,
        data_type="aws:ec2:image"))


# ---------------------------------------------------------------------------- certificates


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


# ---------------------------------------------------------------------------- sshd


def ensure_ssh_user(user: str = SSH_USER, sudo: bool = True) -> pwd.struct_passwd:
    """The dedicated login for the test sshd: a home, no password (but not locked, which
    sshd refuses with UsePAM no) and passwordless sudo (none at all without ``sudo``)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        result = subprocess.run(["useradd", "-m", "-s", "/bin/bash", user],
                                capture_output=True, text=True)
        entry = pwd.getpwnam(user) if result.returncode in (0, 9) else None
        if entry is None:
            raise RigError(f"useradd {user}: {result.stderr}") from None
    run(["usermod", "-p", "*", user])
    sudoers = Path("/etc/sudoers.d") / user
    rule = f"{user} ALL=(ALL) NOPASSWD:ALL\n"
    if not sudo:
        sudoers.unlink(missing_ok=True)
    elif not sudoers.exists() or sudoers.read_text() != rule:
        staged = sudoers.with_name(f".{user}.new")
        staged.write_text(rule)
        staged.chmod(0o440)
        run(["visudo", "-c", "-q", "-f", staged])
        staged.replace(sudoers)
    ssh_dir = Path(entry.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(ssh_dir, entry.pw_uid, entry.pw_gid)
    return entry


def keygen(path: Path, comment: str) -> str:
    """A new ed25519 key pair at path and path.pub; returns the public key line."""
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path])
    return path.with_name(path.name + ".pub").read_text().strip()


def ssh_fingerprint(public_key: str) -> str:
    """OpenSSH's SHA256 fingerprint ("SHA256:...") of a public key line."""
    blob = base64.b64decode(public_key.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
    return "SHA256:" + digest.rstrip("=")


def known_hosts_host(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


SSHD_CONFIG = """\
Port {port}
ListenAddress 0.0.0.0
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers {user}
UsePAM no
PrintMotd no
Subsystem sftp internal-sftp
"""


class SshServer:
    """A real OpenSSH server on 0.0.0.0:port (so any 127.x.y.z reaches it) that lets
    `user` in with client_key, and has its own ed25519 host key.

    Attributes: host, port, user, client_key (path), client_public_key,
    host_public_key ("ssh-ed25519 AAAA..."), host_key_fingerprint ("SHA256:..."),
    known_hosts (a file with the "[127.0.0.1]:port" entry).
    """

    host = LOOPBACK

    def __init__(self, directory: Path, *, user: str, client_key: Path,
                 authorized_keys: Path, owns_authorized_keys: bool = False):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.client_key = Path(client_key)
        self.client_public_key = Path(f"{client_key}.pub").read_text().strip()
        self.authorized_keys = Path(authorized_keys)
        self.owns_authorized_keys = owns_authorized_keys
        self.host_public_key = keygen(self.directory / "host_key", "helios-aws test host")
        self.host_key_fingerprint = ssh_fingerprint(self.host_public_key)
        self.port = free_port()
        config = self.directory / "sshd_config"
        config.write_text(SSHD_CONFIG.format(
            port=self.port, host_key=self.directory / "host_key",
            pid_file=self.directory / "sshd.pid", authorized_keys=self.authorized_keys,
            user=user,
        ))
        # Without systemd nothing creates sshd's privilege separation directory.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        run([SSHD, "-t", "-f", config])
        self.known_hosts = self.directory / "known_hosts"
        self.known_hosts.write_text(self.known_hosts_entry() + "\n")
        self.process = Process([SSHD, "-D", "-e", "-f", config],
                               self.directory / "sshd.log")
        self.process.wait_for_port(LOOPBACK, self.port)

    @classmethod
    def start(cls, directory: Path, user: str = SSH_USER, sudo: bool = True) -> SshServer:
        """Create the user if needed, a client key, and start an sshd that accepts it.
        The per-server authorized keys file lives in the user's ~/.ssh (sshd's
        StrictModes wants it there) and is removed by stop()."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        entry = ensure_ssh_user(user, sudo)
        keygen(directory / "client_key", f"{user} test client")
        authorized = Path(entry.pw_dir) / ".ssh" / f"authorized_keys.{secrets.token_hex(6)}"
        authorized.write_text((directory / "client_key.pub").read_text())
        authorized.chmod(0o600)
        os.chown(authorized, entry.pw_uid, entry.pw_gid)
        try:
            return cls(directory / "sshd", user=user, client_key=directory / "client_key",
                       authorized_keys=authorized, owns_authorized_keys=True)
        except BaseException:
            authorized.unlink()
            raise

    def with_new_host_key(self) -> SshServer:
        """Another sshd for the same user and client key, with a different host key, on
        another port. The caller stops it."""
        directory = Path(tempfile.mkdtemp(prefix="sshd-other-", dir=self.directory))
        return SshServer(directory, user=self.user, client_key=self.client_key,
                         authorized_keys=self.authorized_keys)

    def known_hosts_entry(self, host: str = LOOPBACK) -> str:
        """The known_hosts line for this server reached at host (e.g. an Elastic IP)."""
        return f"{known_hosts_host(host, self.port)} {self.host_public_key}"

    def authorize(self, public_key: str) -> None:
        """Also let the user in with public_key (a line as in authorized_keys), for as
        long as this server (and those made by with_new_host_key) runs."""
        with self.authorized_keys.open("a") as keys:
            keys.write(public_key.strip() + "\n")

    def connect(self):
        """A paramiko client logged in at 127.0.0.1, with strict host key checking
        against known_hosts."""
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(LOOPBACK, port=self.port, username=self.user,
                       key_filename=str(self.client_key), look_for_keys=False,
                       allow_agent=False, timeout=10)
        return client

    def stop(self) -> None:
        self.process.stop()
        if self.owns_authorized_keys:
            self.authorized_keys.unlink(missing_ok=True)

    def __enter__(self) -> SshServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


# ---------------------------------------------------------------------------- nginx

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
{user}pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;

events {{
    worker_connections 256;
}}

http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/temp/client_body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;

    include {site};
}}
"""


class Nginx:
    """nginx with a private prefix: a main nginx.conf whose every path is under prefix
    and which includes the site file (server blocks). /etc/nginx is only read (mime.types).

    Run as root, workers also run as root: files under pytest's 0700 temp directories
    (static roots, gunicorn sockets) would be out of reach of nobody or www-data.
    """

    def __init__(self, prefix: Path, site: Path):
        self.prefix = Path(prefix).resolve()
        self.site = Path(site).resolve()
        (self.prefix / "temp").mkdir(parents=True, exist_ok=True)
        self.conf = self.prefix / "nginx.conf"
        self.error_log = self.prefix / "error.log"
        self.access_log = self.prefix / "access.log"
        self.conf.write_text(NGINX_CONF.format(
            prefix=self.prefix, site=self.site,
            user="user root root;\n" if os.geteuid() == 0 else "",
        ))
        self.process: Process | None = None

    def _argv(self, *extra: str) -> list[str]:
        return [NGINX, "-e", str(self.error_log), "-p", str(self.prefix),
                "-c", str(self.conf), *extra]

    def test(self) -> subprocess.CompletedProcess:
        """`nginx -t -q`: returncode 0 when the configuration is valid, else the
        error in stderr."""
        return subprocess.run(self._argv("-t", "-q"), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)

    def check(self) -> None:
        result = self.test()
        if result.returncode != 0:
            raise RigError(f"nginx -t rejects {self.conf}:\n{result.stderr}")

    def _workers(self) -> set[int]:
        return {pid for pid, _ in process_tree(self.process.pid)}

    def start(self, ports: Sequence[int] = ()) -> None:
        """Validate, start, and wait until each of ports (on loopback) accepts."""
        self.check()
        self.process = Process(self._argv(), self.prefix / "nginx.out")
        self.process.wait_until(self._workers, "nginx started no worker")
        for port in ports:
            self.process.wait_for_port(LOOPBACK, port)

    def reload(self, timeout: float = 10.0) -> None:
        """Validate, reload, and wait until the old workers are gone, so that every
        later request is served with the new configuration."""
        self.check()
        old = self._workers()
        os.kill(self.process.pid, signal.SIGHUP)
        self.process.wait_until(lambda: not (self._workers() & old),
                                "nginx did not replace its workers", timeout)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


# ---------------------------------------------------------------------------- pebble


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


# ---------------------------------------------------------------------------- PostgreSQL


class Postgres:
    """A private PostgreSQL 15 cluster run by the postgres user, trust authentication,
    listening on 127.0.0.1:port and on a socket in socket_dir, with a database `helios`.

    Its directory is made with mkdtemp (not under pytest's root-only temp directory, which
    the postgres user cannot enter) and removed by stop().
    """

    user = "postgres"
    database = "helios"

    def __init__(self):
        entry = pwd.getpwnam("postgres")
        self.root = Path(tempfile.mkdtemp(prefix="helios-aws-pg-"))
        self.root.chmod(0o755)
        os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.socket_dir.mkdir(mode=0o755)
        os.chown(self.socket_dir, entry.pw_uid, entry.pw_gid)
        self.port = free_port()
        self.process: Process | None = None
        try:
            run([PG_BIN / "initdb", "-D", self.data_dir, "-A", "trust", "-U", self.user,
                 "-E", "UTF8", "--no-locale", "--no-sync"], user="postgres", cwd=self.root)
            self.process = Process(
                [PG_BIN / "postgres", "-D", self.data_dir, "-p", str(self.port),
                 "-k", self.socket_dir, "-c", "listen_addresses=127.0.0.1",
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off"],
                self.root / "postgres.log", user="postgres", cwd=self.root,
                stop_signal=signal.SIGINT,  # fast shutdown: do not wait for clients
            )
            self.process.wait_for_port(LOOPBACK, self.port)
            # The port opens before recovery ends: wait until connections are accepted.
            self.process.wait_until(
                lambda: subprocess.run(
                    [PG_BIN / "pg_isready", "-q", "-h", self.socket_dir, "-p",
                     str(self.port)], stdin=subprocess.DEVNULL).returncode == 0,
                "postgres does not accept connections")
            run([PG_BIN / "createdb", self.database], env=dict(os.environ, **self.env))
        except BaseException:
            self.stop()
            raise

    @property
    def env(self) -> dict[str, str]:
        """PGHOST (the socket directory), PGPORT and PGUSER for libpq clients."""
        return {"PGHOST": str(self.socket_dir), "PGPORT": str(self.port),
                "PGUSER": self.user}

    @property
    def database_url(self) -> str:
        return f"postgres://{self.user}@{LOOPBACK}:{self.port}/{self.database}"

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------------- brokers


class Redis:
    """redis-server on 127.0.0.1:port without persistence; url is redis://.../0."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://{LOOPBACK}:{self.port}/0"
        self.process = Process(
            ["redis-server", "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
             "--appendonly", "no", "--dir", self.directory, "--daemonize", "no"],
            self.directory / "redis.log")
        self.process.wait_for_port(LOOPBACK, self.port)

    def stop(self) -> None:
        self.process.stop()


class RabbitMQ:
    """A private RabbitMQ node on 127.0.0.1:port, with its own Erlang port mapper
    (epmd) on a free port; url is amqp://guest:guest@127.0.0.1:port//."""

    def __init__(self, directory: Path):
        self.directory = Path(directory).resolve()
        for sub in ("home", "mnesia", "log", "plugins-expand"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        (self.directory / "enabled_plugins").write_text("[].\n")
        (self.directory / "rabbitmq.conf").write_text("")
        self.port = free_port()
        self.epmd_port = free_port()
        self.node = f"rig{self.port}@localhost"
        self.pid_file = self.directory / "rabbitmq.pid"
        self.url = f"amqp://guest:guest@{LOOPBACK}:{self.port}//"
        self.env = dict(
            os.environ,
            HOME=str(self.directory / "home"),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS=LOOPBACK,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(free_port()),
            RABBITMQ_MNESIA_BASE=str(self.directory / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.directory / "log"),
            RABBITMQ_LOGS="-",
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(self.directory / "plugins-expand"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.directory / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(self.directory / "rabbitmq.conf"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                "-kernel inet_dist_use_interface {127,0,0,1}"),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS=LOOPBACK,
        )
        # The Debian wrapper in /usr/sbin switches to the rabbitmq user and resets HOME:
        # run the real scripts as root, everything under directory.
        self.process = Process([RABBITMQ_BIN / "rabbitmq-server"],
                               self.directory / "rabbitmq.log", env=self.env,
                               cwd=self.directory)
        try:
            result = subprocess.run(
                [RABBITMQ_BIN / "rabbitmqctl", "-n", self.node, "wait", self.pid_file,
                 "--timeout", "60"],
                capture_output=True, text=True, env=self.env, stdin=subprocess.DEVNULL)
            if result.returncode != 0:
                raise self.process.failure(
                    f"rabbitmqctl wait exited {result.returncode}: {result.stderr}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.process.stop(timeout=30)
        # epmd daemonizes (leaves the process tree): end this node's own instance.
        subprocess.run(["epmd", "-port", str(self.epmd_port), "-kill"],
                       capture_output=True, env=self.env, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------------------- slapd

SLAPD = "/usr/sbin/slapd"
SLAPD_CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {directory}/slapd.pid
TLSCACertificateFile {tls.ca}
TLSCertificateFile {tls.fullchain}
TLSCertificateKeyFile {tls.key}

database mdb
maxsize 16777216
suffix "{suffix}"
rootdn "cn=admin,{suffix}"
rootpw {root_password}
directory {directory}/data
access to attrs=userPassword by self =xw by anonymous auth by * none
access to * by * read
"""


class Slapd:
    """A private OpenLDAP server for the directory suffix (dc=example,dc=test), serving
    ldap:// (StartTLS offered) on port and ldaps:// on tls_port, on 127.0.0.1, with a
    certificate from ca. ``add_user(uid, password)`` before ``start()``;
    ``reader_dn``/``reader_password`` is an account that may search the directory.
    Clients trust ca through libldap's LDAPTLS_CACERT variable."""

    def __init__(self, directory: Path, ca: LocalCA, suffix: str = "dc=example,dc=test"):
        self.directory = Path(directory)
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        self.suffix = suffix
        self.port, self.tls_port = free_port(), free_port()
        self.reader_dn = f"cn=reader,{suffix}"
        self.reader_password = secrets.token_urlsafe(12)
        tls = ca.issue("ldap.example.test")
        self.conf = self.directory / "slapd.conf"
        self.conf.write_text(SLAPD_CONF.format(
            directory=self.directory, tls=tls, suffix=suffix,
            root_password=secrets.token_urlsafe(12)))
        top = suffix.split(",")[0].split("=")[1]
        self._entries = [
            f"dn: {suffix}\nobjectClass: dcObject\nobjectClass: organization\n"
            f"dc: {top}\no: {top}\n",
            f"dn: ou=people,{suffix}\nobjectClass: organizationalUnit\nou: people\n",
            f"dn: {self.reader_dn}\nobjectClass: person\ncn: reader\nsn: reader\n"
            f"userPassword: {self.reader_password}\n",
        ]
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    @property
    def people(self) -> str:
        return f"ou=people,{self.suffix}"

    def add_user(self, uid: str, password: str) -> None:
        hashed = run(["slappasswd", "-s", password]).stdout.strip()
        self._entries.append(
            f"dn: uid={uid},{self.people}\nobjectClass: inetOrgPerson\nuid: {uid}\n"
            f"cn: {uid}\nsn: {uid}\nmail: {uid}@example.test\nuserPassword: {hashed}\n")

    def start(self) -> None:
        ldif = self.directory / "entries.ldif"
        ldif.write_text("\n".join(self._entries))
        run(["slapadd", "-f", self.conf, "-l", ldif])
        self.process = Process(
            [SLAPD, "-d", "0", "-f", self.conf, "-h",
             f"ldap://{LOOPBACK}:{self.port}/ ldaps://{LOOPBACK}:{self.tls_port}/"],
            self.directory / "slapd.log")
        self.process.wait_for_port(LOOPBACK, self.port)
        self.process.wait_for_port(LOOPBACK, self.tls_port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
