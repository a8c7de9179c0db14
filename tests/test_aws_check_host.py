"""aws_check's host probes over a real sshd on loopback, through the host half's verified
Connection: the fixture deployed under a host prefix, a real PostgreSQL, RabbitMQ and a
Celery worker. The probes that need systemd are skipped here (no systemd as PID 1); the
VM end-to-end test of the host half runs them for real.

The service user is root here: this machine's Python lives under /root, out of reach of
any other account, so the deployment is built without the validation that refuses root.
"""

import contextlib
import os
import re
import signal
import socket
import sys
import threading
import time

import pytest

import rig
from fixtures import helios_env, make_fixture_project, run_manage
from helios_aws import envfile
from helios_aws.params import Deployment
from helios_aws.probes import base, host

DOMAIN = "vote.example.org"
SETTINGS = "--settings=helios_aws.settings_overrides.production"
HOST_PROBES = [p for p in base.REGISTRY.values() if p.area == "host"]
RELEASE = "20261202090000-0123456789abcdef"


class Host:
    """The fixture laid out as aws_provision lays it out, under a prefix."""

    def __init__(self, base_dir, postgres, local_ca, broker_url):
        self.base = base_dir
        self.prefix = base_dir / "host"
        self.project = make_fixture_project(base_dir, "requirements")
        configured = run_manage(
            self.project, "aws_configure", SETTINGS, "--domain", DOMAIN, "--email",
            "elections@example.org", "--auth-systems", "password", "--broker", "rabbitmq",
            "--host-prefix", str(self.prefix), "--ssh-user", rig.SSH_USER, "--no-input")
        assert configured.returncode == 0, configured.stderr
        (self.project / ".venv").symlink_to(sys.prefix)
        app = self.prefix / "srv/helios"
        (app / "shared").mkdir(parents=True)
        # The project serves as the one installed release, through the links the host
        # half makes, with this tool's records of it.
        (app / "releases").mkdir()
        (app / "releases" / RELEASE).symlink_to(self.project)
        (app / "current").symlink_to(f"releases/{RELEASE}")
        self.records = self.prefix / "var/lib/helios-aws/releases" / RELEASE
        self.records.mkdir(parents=True)
        (self.records / "source").write_text(f"42 files from {self.project}\n")
        (self.records / "installed").touch()
        # A database of its own, reached over the unix socket by DATABASE_URL (which
        # Helios opens with sslmode=require: libpq ignores that on a socket).
        rig.run([rig.PG_BIN / "createdb", "helios_host"], env=dict(os.environ, **postgres.env))
        socket_dir = str(postgres.socket_dir).replace("/", "%2F")
        (app / "config").mkdir(exist_ok=True)
        self.env_file = app / "config/.env"
        self.env_file.write_text(
            (self.project / "deploy/.env").read_text()
            + f"DATABASE_URL=postgres://postgres@{socket_dir}:{postgres.port}/helios_host\n"
            + f"CELERY_BROKER_URL={broker_url}\n")
        self.env_file.chmod(0o600)
        cert = local_ca.issue(DOMAIN)
        live = self.prefix / "etc/letsencrypt/live" / DOMAIN
        live.mkdir(parents=True)
        (live / "fullchain.pem").write_bytes(cert.fullchain.read_bytes())
        (live / "privkey.pem").write_bytes(cert.key.read_bytes())
        # The rendered site, installed where the layout puts it, as this machine's nginx
        # (1.22) reads it: rig.site_for_this_nginx rewrites only the http2 directive.
        self.site = self.prefix / "etc/nginx/conf.d/helios.conf"
        self.site.parent.mkdir(parents=True)
        self.site.write_text(rig.site_for_this_nginx(
            (self.project / "deploy/nginx/helios-https.conf").read_text()))
        # The main nginx.conf where the layout puts it, including the rendered site.
        self.nginx = rig.Nginx(self.prefix / "etc/nginx", self.site)
        self.worker = None

    def manage(self, *args):
        return run_manage(self.project, *args, SETTINGS,
                          env=helios_env(HELIOS_ENV_FILE=str(self.env_file)))

    def start_worker(self):
        env = helios_env(**envfile.parse(self.env_file.read_text()),
                         HELIOS_ENV_FILE=str(self.env_file))
        self.worker = rig.Process(
            [self.project / ".venv/bin/celery", "--app", "helios", "worker", "--pool", "solo",
             "--loglevel", "INFO"],
            self.base / "worker.log", env=env, cwd=self.project)
        self.worker.wait_until(lambda: " ready." in self.worker.log_tail(400),
                               "the Celery worker did not get ready", timeout=60)

    def stop(self):
        if self.worker is not None:
            self.worker.stop()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, postgres, local_ca, rabbitmq_url):
    served = Host(tmp_path_factory.mktemp("host"), postgres, local_ca, rabbitmq_url)
    yield served
    served.stop()


def run_host_probes(deployed, sshd, known_hosts=None, only=(), timeout=30, **deployment):
    values = dict(domain=DOMAIN, email="elections@example.org", ssh_user=sshd.user,
                  service_user="root", broker="rabbitmq", host_prefix=str(deployed.prefix))
    values.update(deployment)
    target = Deployment(**values)
    connect = host.connector(target, {}, host=sshd.host, port=sshd.port,
                             key_file=sshd.client_key,
                             known_hosts=[known_hosts or sshd.known_hosts])
    ctx = base.Context(target, celery_app="helios", timeout=timeout,
                       ssh=lambda: host.Pool(connect).open_first())
    try:
        probes = [p for p in HOST_PROBES if not only or p.id in only]
        return {r.id: r for r in base.run(probes, ctx)}
    finally:
        ctx.close()


def test_host_probes_before_and_after_the_deploy_finished(deployed, sshd):
    results = run_host_probes(deployed, sshd)
    # Not migrated yet, no worker: both fail with their own ids.
    assert results["host.E005"].status == "fail"
    # (Helios's and helios-aws's own: its mail ledger)
    assert re.match(r"18 migration\(s\) not applied: contenttypes\.0001_initial, ",
                    results["host.E005"].message)
    assert results["host.E006"].status == "fail"
    assert "No worker answered" in results["host.E006"].message
    assert results["host.E007"].status == "pass"
    assert "database helios_host as role postgres" in results["host.E007"].message
    assert results["host.E009"].status == "pass"
    assert re.fullmatch(rf"Serving release {RELEASE}, installed \d{{4}}-\d\d-\d\d \d\d:\d\d: "
                        rf"42 files from {re.escape(str(deployed.project))}\.",
                        results["host.E009"].message)
    assert results["host.E002"].status == "pass"
    assert results["host.E003"].status in ("pass", "warn")
    assert re.match(r"/ \d+% used \(\d+ GiB free\)", results["host.E003"].message)
    for probe_id in ("host.E001", "host.E004"):
        assert results[probe_id].status == "skip"
        assert "systemd does not run this host" in results[probe_id].message

    migrated = deployed.manage("migrate", "--no-input")
    assert migrated.returncode == 0, migrated.stderr
    deployed.start_worker()
    results = run_host_probes(deployed, sshd)
    assert results["host.E005"].status == "pass", results["host.E005"]
    assert results["host.E006"].status == "pass", results["host.E006"]
    assert f"pong from celery@{socket.gethostname()}" in results["host.E006"].message


# (probe, the file on the host that is broken, what is replaced with what, what it must say)
BROKEN_ON_THE_HOST = [
    ("host.E002", "site", ("ssl_protocols", "ssl_protocolz"),
     'unknown directive "ssl_protocolz"'),
    ("host.E007", "env_file", ("/helios_host", "/no_such_database"),
     'database "no_such_database" does not exist'),
]


@pytest.mark.parametrize("probe_id,file,edit,message", BROKEN_ON_THE_HOST,
                         ids=[row[0] for row in BROKEN_ON_THE_HOST])
def test_what_is_broken_on_the_host_fails_its_probe(deployed, sshd, probe_id, file, edit,
                                                    message):
    path = getattr(deployed, file)
    good = path.read_text()
    try:
        path.write_text(good.replace(*edit))
        result = run_host_probes(deployed, sshd, only=[probe_id])[probe_id]
    finally:
        path.write_text(good)
    assert result.status == "fail"
    assert message in result.message


def test_a_serving_release_never_completely_installed_fails_host_E009(deployed, sshd):
    installed = deployed.records / "installed"
    installed.unlink()
    try:
        result = run_host_probes(deployed, sshd, only=["host.E009"])["host.E009"]
    finally:
        installed.touch()
    assert result.status == "fail"
    assert result.message == (f"Release {RELEASE} is serving, but it was never completely "
                              "installed.")


def test_unknown_host_key_skips_every_host_probe(deployed, sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    results = run_host_probes(deployed, sshd, known_hosts=empty)
    assert {r.status for r in results.values()} == {"skip"}
    assert all("host key" in r.message and "unknown" in r.message for r in results.values())
    assert all("--trust-host-key" in r.hint for r in results.values())


def aws_check_over_ssh(deployed, sshd, *args):
    return run_manage(deployed.project, "aws_check", SETTINGS, "--only", "host.E002,host.E003",
                      "--host", sshd.host, "--ssh-port", str(sshd.port), "--ssh-key",
                      str(sshd.client_key), "--known-hosts", str(sshd.known_hosts),
                      "--no-color", *args,
                      env=helios_env(HELIOS_ENV_FILE=str(deployed.env_file)))


def test_aws_check_reaches_the_host_with_the_ssh_options(deployed, sshd):
    """The command's own SSH flags, end to end. The recorded service user (helios) does
    not exist here, so only probes that do not run Django are asked for."""
    result = aws_check_over_ssh(deployed, sshd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"pass  host\.E002  nginx -t accepts .*/etc/nginx/nginx\.conf",
                     result.stdout)


def test_aws_check_logs_in_as_the_ssh_user_it_is_given(deployed, sshd):
    result = aws_check_over_ssh(deployed, sshd, "--ssh-user", "nobody-here")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"skip  host\.E002  .*nobody-here", result.stdout), result.stdout
    result = aws_check_over_ssh(deployed, sshd, "--ssh-user", sshd.user)
    assert "pass  host.E002" in result.stdout, result.stdout
    result = aws_check_over_ssh(deployed, sshd, "--ssh-user", "Bad User")
    assert result.returncode == 1
    assert "--ssh-user 'Bad User' is not a valid user name" in result.stderr


@contextlib.contextmanager
def env_set(deployed, name, value):
    """The host's .env with ``name=value`` (replaced or added), for the duration."""
    good = deployed.env_file.read_text()
    kept = [line for line in good.splitlines() if not line.startswith(f"{name}=")]
    deployed.env_file.write_text("\n".join(kept + [f"{name}={value}"]) + "\n")
    try:
        yield
    finally:
        deployed.env_file.write_text(good)


def make_healthy(deployed):
    """Migrated, with a worker running (as the first test leaves it)."""
    migrated = deployed.manage("migrate", "--no-input")
    assert migrated.returncode == 0, migrated.stderr
    if deployed.worker is None:
        deployed.start_worker()


DJANGO_SIDE = ("host.E005", "host.E006", "host.E007")


def test_a_slow_starting_helios_passes_within_the_default_deadline(deployed, sshd):
    """Each start of Django takes 16 s (the real Helios took 12-15 s on an emulated small
    server), more than the 15 s default deadline: the Django-side probes share one start
    and get the time it needs."""
    make_healthy(deployed)
    with env_set(deployed, "FIXTURE_STARTUP_DELAY", "16"):
        started = time.monotonic()
        results = run_host_probes(deployed, sshd, only=DJANGO_SIDE,
                                  timeout=base.DEFAULT_TIMEOUT)
        seconds = time.monotonic() - started
    for probe_id in DJANGO_SIDE:
        assert results[probe_id].status == "pass", results[probe_id]
    assert 16 <= seconds < 32  # one start, not three one after the other


@pytest.fixture
def silent_listener():
    """HOST:PORT of a listener that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


def test_a_hung_worker_fails_the_ping(deployed, sshd):
    """The worker is there but stopped (SIGSTOP): no reply is a fail, never a pass or a
    skip."""
    make_healthy(deployed)
    os.kill(deployed.worker.pid, signal.SIGSTOP)
    try:
        result = run_host_probes(deployed, sshd, only=["host.E006"])["host.E006"]
    finally:
        os.kill(deployed.worker.pid, signal.SIGCONT)
    assert result.status == "fail"
    assert result.message == "No worker answered a ping within 5 s."


# (what is silent, the .env variable that points at it, its URL, the probes that fail)
SILENT_SERVICES = [
    ("broker", "CELERY_BROKER_URL", "amqp://guest:guest@{}//", ["host.E006"]),
    ("database", "DATABASE_URL", "postgres://postgres@{}/helios_host",
     ["host.E005", "host.E007"]),
]


@pytest.mark.parametrize("service,name,url,failing", SILENT_SERVICES,
                         ids=[row[0] for row in SILENT_SERVICES])
def test_a_service_that_never_answers_fails_with_a_hint_to_reach_it(
        deployed, sshd, silent_listener, service, name, url, failing):
    """A broker or a database that accepts the connection and never answers: its probes
    fail (never skip, never pass) saying it did not answer in time; the other checks of the
    same Django process still answer."""
    make_healthy(deployed)
    with env_set(deployed, name, url.format(silent_listener)):
        results = run_host_probes(deployed, sshd, only=DJANGO_SIDE,
                                  timeout=base.DEFAULT_TIMEOUT)
    for probe_id in DJANGO_SIDE:
        result = results[probe_id]
        if probe_id in failing:
            assert result.status == "fail", result
            assert result.hint == base.TIMEOUT_HINTS["host"]
            assert "timed out" in result.message or "no answer within" in result.message
        else:
            assert result.status == "pass", result


XFF_RE = re.compile(r"proxy_set_header\s+X-Forwarded-For\s+[^;]+;")
PEER_ONLY = "proxy_set_header X-Forwarded-For $remote_addr;"
# (case, how the peer-only site is changed, what host.E008 must say)
FORWARDING = [
    ("peer-only", lambda site: site, None),
    ("appended", lambda site: site.replace(
        PEER_ONLY, "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"),
     "X-Forwarded-For is sent as '$proxy_add_x_forwarded_for'"),
    ("copied", lambda site: site.replace(
        PEER_ONLY, 'proxy_set_header X-Forwarded-For "$http_x_forwarded_for";'),
     "X-Forwarded-For is sent as '$http_x_forwarded_for'"),
    ("other-header", lambda site: site.replace(
        PEER_ONLY, PEER_ONLY + " proxy_set_header X-Real-IP $http_x_real_ip;"),
     "X-Real-IP is sent as '$http_x_real_ip'"),
    ("not-set", lambda site: site.replace(PEER_ONLY, ""),
     "proxy_pass without proxy_set_header X-Forwarded-For"),
    ("real-ip-module", lambda site: site.replace(
        PEER_ONLY, PEER_ONLY + " real_ip_header X-Forwarded-For;"),
     "real_ip_header X-Forwarded-For makes $remote_addr the client's own header"),
]


@pytest.mark.parametrize("case,change,message", FORWARDING, ids=[row[0] for row in FORWARDING])
def test_the_installed_site_must_send_the_peer_address_alone(deployed, sshd, case, change,
                                                             message):
    rendered = deployed.site.read_text()
    try:
        deployed.site.write_text(change(XFF_RE.sub(lambda m: PEER_ONLY, rendered)))
        result = run_host_probes(deployed, sshd, only=["host.E008"])["host.E008"]
    finally:
        deployed.site.write_text(rendered)
    if message is None:
        assert result.status == "pass", result
    else:
        assert result.status == "fail"
        assert message in result.message
        assert str(deployed.site) in result.message


def test_the_deployed_env_must_be_there_and_private_host_E010(deployed, sshd):
    env_file = deployed.env_file
    assert run_host_probes(deployed, sshd, only=("host.E010",))["host.E010"].status == "pass"
    kept = env_file.with_name(".env.kept")
    env_file.rename(kept)
    try:
        missing = run_host_probes(deployed, sshd, only=("host.E010",))["host.E010"]
        env_file.mkdir()
        directory = run_host_probes(deployed, sshd, only=("host.E010",))["host.E010"]
        env_file.rmdir()
        kept.rename(env_file)
        env_file.chmod(0o644)
        shared = run_host_probes(deployed, sshd, only=("host.E010",))["host.E010"]
    finally:
        if env_file.is_dir():
            env_file.rmdir()
        if kept.exists():
            kept.rename(env_file)
        env_file.chmod(0o600)

    assert (missing.status, missing.message) == (
        "fail", f"{env_file} does not exist: Helios refuses to start without it.")
    assert (directory.status, directory.message) == ("fail", f"{env_file} is not a regular file.")
    assert (shared.status, shared.message) == (
        "fail", f"{env_file} has mode 644: others can read its secrets.")
