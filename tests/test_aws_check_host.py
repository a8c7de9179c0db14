"""aws_check's host probes over a real sshd on loopback, through the host half's verified
Connection: the fixture deployed under a host prefix, a real PostgreSQL, RabbitMQ and a
Celery worker. The probes that need systemd are skipped here (no systemd as PID 1); the
VM end-to-end test of the host half runs them for real.

The service user is root here: this machine's Python lives under /root, out of reach of
any other account, so the deployment is built without the validation that refuses root.
"""

import os
import re
import socket
import sys

import pytest

import rig
from fixtures import helios_env, make_fixture_project, run_manage
from helios_aws import envfile
from helios_aws.params import Deployment
from helios_aws.probes import base, host

DOMAIN = "vote.example.org"
SETTINGS = "--settings=helios_aws.settings_overrides.production"
HOST_PROBES = [p for p in base.REGISTRY.values() if p.area == "host"]


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
        (app / "current").symlink_to(self.project)
        # A database of its own, reached over the unix socket by DATABASE_URL (which
        # Helios opens with sslmode=require: libpq ignores that on a socket).
        rig.run([rig.PG_BIN / "createdb", "helios_host"], env=dict(os.environ, **postgres.env))
        socket_dir = str(postgres.socket_dir).replace("/", "%2F")
        self.env_file = app / "shared/.env"
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
        self.site = self.project / "deploy/nginx/helios-https.conf"
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


def run_host_probes(deployed, sshd, known_hosts=None, only=(), **deployment):
    values = dict(domain=DOMAIN, email="elections@example.org", ssh_user=sshd.user,
                  service_user="root", broker="rabbitmq", host_prefix=str(deployed.prefix))
    values.update(deployment)
    target = Deployment(**values)
    connect = host.connector(target, {}, host=sshd.host, port=sshd.port,
                             key_file=sshd.client_key,
                             known_hosts=[known_hosts or sshd.known_hosts])
    ctx = base.Context(target, celery_app="helios", timeout=30,
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
    assert re.match(r"17 migration\(s\) not applied: contenttypes\.0001_initial, ",
                    results["host.E005"].message)
    assert results["host.E006"].status == "fail"
    assert "No worker answered" in results["host.E006"].message
    assert results["host.E007"].status == "pass"
    assert "database helios_host as role postgres" in results["host.E007"].message
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


def test_unknown_host_key_skips_every_host_probe(deployed, sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    results = run_host_probes(deployed, sshd, known_hosts=empty)
    assert {r.status for r in results.values()} == {"skip"}
    assert all("host key" in r.message and "unknown" in r.message for r in results.values())
    assert all("--trust-host-key" in r.hint for r in results.values())


def test_aws_check_reaches_the_host_with_the_ssh_options(deployed, sshd):
    """The command's own SSH flags, end to end. The recorded service user (helios) does
    not exist here, so only probes that do not run Django are asked for."""
    result = run_manage(deployed.project, "aws_check", SETTINGS, "--only", "host.E002,host.E003",
                        "--host", sshd.host, "--ssh-port", str(sshd.port), "--ssh-key",
                        str(sshd.client_key), "--known-hosts", str(sshd.known_hosts),
                        "--no-color", env=helios_env(HELIOS_ENV_FILE=str(deployed.env_file)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"pass  host\.E002  nginx -t accepts .*/etc/nginx/nginx\.conf",
                     result.stdout)
