"""Real local stand-ins for the test suite: an SSH host, nginx, PostgreSQL, RabbitMQ and
Redis, plus what the rehearsal also uses (the local AWS, a local CA, the ACME server and
the process helpers), which live in ``helios_aws.rehearse`` and are imported from there.

Every component listens on loopback on a free port, keeps its data and its log in a
directory the caller gives, and is stopped by the caller (conftest.py does it). Processes
run in their own session and are killed with all their descendants on stop; they also get
SIGTERM if the test process dies without tearing down. The only system state touched is
the dedicated SSH test user, which sshd needs to exist.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

# The stand-ins the rehearsal shares with the tests; the tests reach them as rig.NAME.
from helios_aws.rehearse.aws import (  # noqa: F401
    MotoServer, cloud_init_console, moto_data, moto_reset, publish_debian_images,
    publish_public_parameter, serve_console_output, ssh_keygen_fingerprint,
)
from helios_aws.rehearse.processes import (  # noqa: F401
    LOOPBACK, Process, StandInError as RigError, free_port, process_tree, run, still_running,
    wait_for_port,
)
from helios_aws.rehearse.tls import (  # noqa: F401
    GuestPebble, LocalCA, Pebble, guest_trust_bundle, self_signed_cert,
)

SSH_USER = "helios-aws-test"
SSHD = "/usr/sbin/sshd"
NGINX = "/usr/sbin/nginx"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


# ---------------------------------------------------------------------------- AWS


def moto_fresh(url: str) -> None:
    """Empty the moto server at url, then give it Debian 13's image parameters (those of
    the default OS), which moto does not ship."""
    moto_reset(url)
    publish_debian_images(url)


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


# nginx 1.25.1 introduced `http2 on;` (and deprecated the `http2` parameter of `listen`).
HTTP2_DIRECTIVE_SINCE = (1, 25, 1)
HTTP2_ON_RE = re.compile(r"^[ \t]*http2 on;[ \t]*\n", re.M)
LISTEN_SSL_RE = re.compile(r"^([ \t]*listen[ \t]+\S+[ \t]+ssl);", re.M)


@functools.cache
def nginx_version() -> tuple[int, ...]:
    """This machine's nginx version, e.g. (1, 22, 1) on Debian 12."""
    banner = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr
    return tuple(int(n) for n in re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", banner).groups())


def site_for_this_nginx(text: str) -> str:
    """The site as this machine's nginx can read it.

    The site for Debian 13 (nginx 1.26) enables HTTP/2 with `http2 on;`, which the nginx
    on this machine (Debian 12: 1.22) rejects as an unknown directive. For an nginx that
    old, and only then, that one directive becomes the `http2` parameter of the same
    server's `listen ... ssl` lines, the same setting in the older form. Everything else
    is served and validated as generated; the tests assert the generated text itself.
    """
    if nginx_version() >= HTTP2_DIRECTIVE_SINCE or not HTTP2_ON_RE.search(text):
        return text
    return LISTEN_SSL_RE.sub(r"\1 http2;", HTTP2_ON_RE.sub("", text))


class Nginx:
    """nginx with a private prefix: a main nginx.conf whose every path is under prefix
    and which includes the site file (server blocks). /etc/nginx is only read (mime.types).

    When this machine's nginx is too old for the site's `http2 on;`, nginx.conf includes
    ``installed_site``, a copy made by site_for_this_nginx() under prefix, refreshed at
    every test(), start() and reload(); otherwise the site file itself.

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
        self.installed_site = self.site
        self.install_site()
        self.process: Process | None = None

    def install_site(self) -> None:
        """Point nginx.conf at the site as this nginx can read it (see the class)."""
        text = self.site.read_text()
        readable = site_for_this_nginx(text)
        self.installed_site = self.site
        if readable != text:
            self.installed_site = self.prefix / "site-for-this-nginx.conf"
            self.installed_site.write_text(readable)
        self.conf.write_text(NGINX_CONF.format(
            prefix=self.prefix, site=self.installed_site,
            user="user root root;\n" if os.geteuid() == 0 else "",
        ))

    def _argv(self, *extra: str) -> list[str]:
        return [NGINX, "-e", str(self.error_log), "-p", str(self.prefix),
                "-c", str(self.conf), *extra]

    def test(self) -> subprocess.CompletedProcess:
        """`nginx -t -q`: returncode 0 when the configuration is valid, else the
        error in stderr."""
        self.install_site()
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
