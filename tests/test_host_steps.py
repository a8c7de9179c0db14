"""The host steps without a host: state in, commands out.

A fake connection records every command and answers the read scripts with canned
output, the way pyinfra tests its operations. The real shell and the real SSH server
are in test_host_ssh.py; the real systemd host in test_host_vm.py.
"""

import hashlib
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import django
import pytest
from django.conf import settings

from helios_aws import configure, engine, params
from helios_aws.errors import ConfigError, HostError
from helios_aws.host import recipes, release, steps as host
from helios_aws.host.ssh import Result
from helios_aws.project import Project, StaticAlias

FINGERPRINT = "SHA256:gbP8kbUm10kpXxTB43FekViDRfvIBSe9MGDDVFTSkKY"

# Rendering the deployment's files needs Django's settings, nothing from them.
if not settings.configured:
    settings.configure()
    django.setup()


class FakeConnection:
    """Stands in for ssh.Connection: records commands, answers from ``replies``.

    ``replies`` maps a substring of a command to its stdout, or to (stdout, status);
    the first matching entry (in insertion order) answers, else "" with status 0.
    """

    label = "admin@192.0.2.10:22"
    host_key_fingerprint = FINGERPRINT

    def __init__(self, replies=None):
        self.replies = dict(replies or {})
        self.commands = []
        self.files = {}
        self.staged = []

    def reply(self, needle, stdout, status=0):
        self.replies = {needle: (stdout, status), **self.replies}

    def run(self, command, sudo=False, check=True, input=None, timeout=None, step=None):
        self.commands.append(command)
        stdout, status = "", 0
        for needle, answer in self.replies.items():
            if needle in command:
                stdout, status = answer if isinstance(answer, tuple) else (answer, 0)
                break
        if check and status:
            raise HostError(f"`{command}` failed with exit status {status}.")
        return Result(command, status, stdout, "")

    def put(self, data, remote_path, mode=0o644, owner=None, group=None, step=None):
        self.files[str(remote_path)] = (data, mode, owner)

    def put_files(self, files, mode=0o644, owner="root", group=None, step=None):
        for path, data in files.items():
            self.files[str(path)] = (data, mode, owner)

    def stage(self, data):
        self.staged.append(data)
        return f"/tmp/helios-aws.test/{len(self.staged)}"

    def close(self):
        pass

    @property
    def changes(self):
        """The commands after the last read (reads start with "cd /" or are queries)."""
        return [c for c in self.commands if not c.startswith("cd /\n")]


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "helios-server"
    root.mkdir()
    (root / "manage.py").write_text("print('manage')\n")
    (root / "settings.py").write_text("DEBUG = False\n")
    (root / "uv.lock").write_text("version = 1\n")
    (root / "helios").mkdir()
    (root / "helios" / "media").mkdir()
    (root / "helios" / "media" / "logo.png").write_bytes(b"\x89PNG")
    return Project(root=root, wsgi="wsgi:application", celery_app="helios",
                   static=(StaticAlias("/static/helios/", "helios/media"),),
                   dependency_source="uv", python="3.13", default_from_email="",
                   auth_systems="password")


def make_ctx(tmp_path, project, options=None, **fields):
    values = {"domain": "vote.example.org", "email": "elections@example.org",
              "os": "debian13", "auth_systems": "password", **fields}
    deployment = params.build([values])
    out_dir = tmp_path / "deploy"
    configure.configure(deployment, project, out_dir)
    ctx = engine.Context(deployment, out_dir, options=dict(options or {}))
    ctx.ssh = FakeConnection()
    return ctx


@pytest.fixture
def ctx(tmp_path, project):
    return make_ctx(tmp_path, project)


def target(ctx, project):
    return host.Target(ctx, project)


def run_step(step, ctx):
    """read + plan, and apply when the plan is not keep; returns (change, outcome)."""
    current = step.read(ctx)
    change = step.plan(ctx, current)
    if change.action == engine.KEEP:
        return change, engine.UNCHANGED
    return change, step.apply(ctx, current, change)


def facts(**values):
    return "".join(f"{k}={v}\n" for k, v in values.items())


# ------------------------------------------------------------------------ the list


def test_step_list_for_debian_with_uv_and_rabbitmq(ctx, project):
    names = [s.name for s in host.steps(ctx, project)]
    assert names == [
        "host: ssh", "host: broker configuration", "host: packages", "host: uv",
        "host: service user and directories", "host: postgresql", "host: broker",
        "host: .env", "host: release", "host: migrate", "host: switch release",
        "host: systemd units", "host: nginx site (HTTP)", "host: certificate",
        "host: nginx site (HTTPS)", "host: certificate renewal", "host: liveness",
        "host: nightly backup",
    ]


def test_step_list_for_al2023_with_pip_and_a_ca_bundle(tmp_path, project):
    project = Project(**{**project.__dict__, "dependency_source": "pip"})
    ctx = make_ctx(tmp_path, project, {"ca_bundle": "/x.pem"}, os="al2023")
    names = [s.name for s in host.steps(ctx, project)]
    assert "host: uv" not in names and "host: broker configuration" not in names
    assert names[1] == "host: trusted CA certificates"


def test_a_project_needing_a_newer_python_is_refused(ctx, project):
    project = Project(**{**project.__dict__, "python": "3.14"})
    with pytest.raises(ConfigError, match="requires Python 3.14"):
        host.steps(ctx, project)


def test_al2023_with_rabbitmq_is_refused_with_the_reason(tmp_path, project):
    ctx = make_ctx(tmp_path, project, os="al2023", broker="rabbitmq")
    with pytest.raises(ConfigError, match="no Erlang or RabbitMQ"):
        host.steps(ctx, project)


def test_amazon_linux_2_is_refused_by_the_parameters():
    with pytest.raises(ConfigError, match="end of support"):
        params.build([{"os": "al2"}])


# ------------------------------------------------------------------------ ssh / OS


def test_connect_accepts_the_deployments_os(ctx, project):
    ctx.ssh.reply("os-release", facts(id="debian", version="13", name="Debian GNU/Linux 13"))
    change, outcome = run_step(host.Connect(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED
    assert FINGERPRINT in change.details[0]


def test_connect_refuses_another_os(ctx, project):
    ctx.ssh.reply("os-release", facts(id="amzn", version="2023", name="Amazon Linux 2023"))
    with pytest.raises(HostError, match="runs Amazon Linux 2023"):
        run_step(host.Connect(target(ctx, project)), ctx)


def test_connect_refuses_amazon_linux_2_with_the_end_of_support(ctx, project):
    ctx.ssh.reply("os-release", facts(id="amzn", version="2", name="Amazon Linux 2"))
    with pytest.raises(HostError) as error:
        run_step(host.Connect(target(ctx, project)), ctx)
    assert "2026-06-30" in error.value.hint


# ------------------------------------------------------------------------ CA certificates

CERT = "-----BEGIN CERTIFICATE-----\nMIIBfake{}\n-----END CERTIFICATE-----"


def test_ca_bundle_is_split_one_certificate_a_file_and_trusted(tmp_path, project):
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(f"{CERT.format(1)}\n{CERT.format(2)}\n{CERT.format(1)}\n")
    ctx = make_ctx(tmp_path, project, {"ca_bundle": str(bundle)})
    change, _ = run_step(host.TrustCA(target(ctx, project)), ctx)
    anchor = "/usr/local/share/ca-certificates/helios-aws"
    assert change.action == engine.CREATE
    assert sorted(ctx.ssh.files) == [f"{anchor}/helios-aws-000.crt", f"{anchor}/helios-aws-001.crt"]
    assert ctx.ssh.commands[-2:] == [f"rm -rf {anchor} && mkdir -p {anchor}",
                                     "update-ca-certificates >/dev/null"]


def test_ca_bundle_already_trusted_is_a_no_op(tmp_path, project):
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(CERT.format(1))
    ctx = make_ctx(tmp_path, project, {"ca_bundle": str(bundle)})
    ctx.ssh.reply("sha256sum *", f"{sha(CERT.format(1) + chr(10))}  helios-aws-000.crt\n")
    _, outcome = run_step(host.TrustCA(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED
    assert len(ctx.ssh.commands) == 1


def test_ca_bundle_without_certificates_is_refused(tmp_path, project):
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("not a certificate")
    ctx = make_ctx(tmp_path, project, {"ca_bundle": str(bundle)})
    with pytest.raises(ConfigError, match="no PEM certificate"):
        run_step(host.TrustCA(target(ctx, project)), ctx)


# ------------------------------------------------------------------------ packages


def test_packages_installs_only_what_is_missing(ctx, project):
    ctx.ssh.reply("dpkg-query", "python3.13\nnginx\ngcc\n")
    change, _ = run_step(host.Packages(target(ctx, project)), ctx)
    assert change.action == engine.CREATE
    install = ctx.ssh.commands[-1]
    assert "install -y -q --no-install-recommends" in install
    # dpkg left half-way by an interrupted run is finished first; apt's lock is waited for.
    assert "dpkg --configure -a" in install and "DPkg::Lock::Timeout" in install
    assert "python3.13-venv" in install and "rabbitmq-server" in install
    assert " nginx" not in install and " gcc" not in install


def test_packages_all_present_is_a_no_op(ctx, project):
    wanted = recipes.Debian13().packages("rabbitmq")
    ctx.ssh.reply("dpkg-query", "\n".join(wanted))
    _, outcome = run_step(host.Packages(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED and len(ctx.ssh.commands) == 1


def test_al2023_packages_use_dnf_and_redis6(tmp_path, project):
    ctx = make_ctx(tmp_path, project, os="al2023")
    ctx.ssh.reply("rpm -q", "nginx\n")
    run_step(host.Packages(target(ctx, project)), ctx)
    install = ctx.ssh.commands[-1]
    assert install.startswith("dnf install -y -q ")
    for name in ("python3.13-devel", "openldap-devel", "cyrus-sasl-devel",
                 "postgresql15-server", "redis6", "certbot", "python3-certbot-nginx"):
        assert name in install.split()
    assert "nginx" not in install.split()


def test_git_deploys_add_git(tmp_path, project):
    ctx = make_ctx(tmp_path, project, {"git_url": "https://git.example.org/helios.git"})
    run_step(host.Packages(target(ctx, project)), ctx)
    assert "git" in ctx.ssh.commands[-1].split()


# ------------------------------------------------------------------------ uv


def test_uv_is_installed_into_its_own_venv(ctx, project):
    change, _ = run_step(host.UvTool(target(ctx, project)), ctx)
    assert change.action == engine.CREATE
    assert ctx.ssh.commands[-1] == (
        "umask 022; /usr/bin/python3.13 -m venv /srv/helios/tools/uv && "
        "PIP_CERT=/etc/ssl/certs/ca-certificates.crt /srv/helios/tools/uv/bin/pip install "
        "-q --disable-pip-version-check 'uv>=0.8'")


def test_uv_present_is_a_no_op(ctx, project):
    ctx.ssh.reply("uv-*.dist-info", "version=0.9.5\n")
    change, outcome = run_step(host.UvTool(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED and change.details == ["uv 0.9.5"]
    assert len(ctx.ssh.commands) == 1


def test_uv_version_is_read_from_its_metadata(tmp_path, ctx, project):
    """The read script, run by a real shell over a fake tool directory."""
    home = tmp_path / "srv" / "helios" / "tools" / "uv"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "uv").write_text("#!/bin/sh\n")
    (home / "bin" / "uv").chmod(0o755)
    (home / "lib" / "python3.13" / "site-packages" / "uv-0.9.5.dist-info").mkdir(parents=True)
    ctx2 = make_ctx(tmp_path / "other", project, host_prefix=str(tmp_path))
    step = host.UvTool(target(ctx2, project))
    step.read(ctx2)
    script = ctx2.ssh.commands[0]
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout
    assert host.parse_facts(out) == {"version": "0.9.5"}


# ------------------------------------------------------------------------ user, directories

DIRS_OK = {
    "dir./srv/helios": "root root 755", "dir./srv/helios/releases": "root root 755",
    "dir./srv/helios/shared": "helios helios 750",
    "dir./srv/helios/shared/media": "helios helios 750",
    "dir./var/www/acme": "root root 755", "dir./var/lib/helios-aws": "root root 755",
}


def test_service_user_is_created_with_the_layout(ctx, project):
    change, _ = run_step(host.ServiceUser(target(ctx, project)), ctx)
    assert change.action == engine.CREATE
    command = ctx.ssh.commands[-1]
    assert command.startswith("useradd --system --user-group --home-dir /srv/helios "
                              "--no-create-home --shell /usr/sbin/nologin helios && ")
    assert "install -d -o helios -g helios -m 750 /srv/helios/shared/media" in command
    assert "install -d -o root -g root -m 755 /srv/helios/releases" in command


def test_service_user_and_layout_in_place_is_a_no_op(ctx, project):
    ctx.ssh.reply("getent passwd", facts(user="helios:/srv/helios:/usr/sbin/nologin",
                                         **DIRS_OK))
    _, outcome = run_step(host.ServiceUser(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED


def test_a_directory_with_wrong_mode_is_fixed_without_touching_the_user(ctx, project):
    wrong = {**DIRS_OK, "dir./srv/helios/shared": "helios helios 777"}
    ctx.ssh.reply("getent passwd", facts(user="helios:/srv/helios:/usr/sbin/nologin", **wrong))
    change, _ = run_step(host.ServiceUser(target(ctx, project)), ctx)
    assert change.action == engine.UPDATE
    assert "useradd" not in ctx.ssh.commands[-1]


# ------------------------------------------------------------------------ PostgreSQL

PG_OK = {"enabled.postgresql": "enabled", "active.postgresql": "active",
         "db": "role helios UTF8", "peer": "helios"}


def test_postgres_from_scratch_creates_role_and_database(ctx, project):
    states = iter([facts(**{**PG_OK, "db": "none none", "peer": ""}),
                   facts(**{**PG_OK, "db": "none none", "peer": ""}),
                   facts(**PG_OK)])
    ctx.ssh.run_orig = ctx.ssh.run

    def run(command, **kwargs):
        if command.startswith("cd /\n"):
            ctx.ssh.commands.append(command)
            return Result(command, 0, next(states), "")
        return ctx.ssh.run_orig(command, **kwargs)

    ctx.ssh.run = run
    change, _ = run_step(host.Postgres(target(ctx, project)), ctx)
    assert change.action == engine.CREATE
    sql = [shlex.split(c)[-1] for c in ctx.ssh.changes if "psql" in c and "SELECT 1" not in c]
    assert sql == [
        'CREATE ROLE "helios" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE',
        "CREATE DATABASE helios OWNER \"helios\" ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' "
        "LC_CTYPE 'C.UTF-8' TEMPLATE template0"]
    assert "systemctl enable --now postgresql" in ctx.ssh.changes[0]
    assert not any("hba" in c for c in ctx.ssh.changes)


def test_al2023_postgres_is_initialised_first(tmp_path, project):
    ctx = make_ctx(tmp_path, project, os="al2023")
    ctx.ssh.reply("cd /\n", facts(**PG_OK))
    step = host.Postgres(target(ctx, project))
    step.apply(ctx, {}, engine.Change(engine.UPDATE))
    assert ctx.ssh.changes[0].startswith(
        "cd / && [ -f /var/lib/pgsql/data/PG_VERSION ] || postgresql-setup --initdb")


def test_postgres_superuser_role_is_demoted(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{**PG_OK, "db": "superuser helios UTF8"}))
    change, _ = run_step(host.Postgres(target(ctx, project)), ctx)
    assert "take superuser away from role helios" in change.details
    assert any('ALTER ROLE "helios" NOSUPERUSER' in c for c in ctx.ssh.changes)
    assert not any("CREATE" in c for c in ctx.ssh.changes)


def test_postgres_in_place_is_a_no_op(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**PG_OK))
    _, outcome = run_step(host.Postgres(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED and len(ctx.ssh.commands) == 1


# ------------------------------------------------------------------------ broker


def test_broker_configuration_is_written_before_the_package(ctx, project):
    change, _ = run_step(host.BrokerConfig(target(ctx, project)), ctx)
    assert change.action == engine.UPDATE
    assert ctx.ssh.files["/etc/rabbitmq/conf.d/90-helios-aws.conf"][0] == \
        recipes.RABBITMQ_FILES["/etc/rabbitmq/conf.d/90-helios-aws.conf"]
    assert "listeners.tcp.default = 127.0.0.1:5672" in \
        ctx.ssh.files["/etc/rabbitmq/conf.d/90-helios-aws.conf"][0]
    assert "ListenStream=127.0.0.1:4369" in \
        ctx.ssh.files["/etc/systemd/system/epmd.socket.d/helios-aws.conf"][0]
    assert ctx.ssh.commands[-1] == "systemctl daemon-reload"


def test_changed_broker_configuration_restarts_a_running_broker(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"active.rabbitmq-server.service": "active"}))
    run_step(host.BrokerConfig(target(ctx, project)), ctx)
    assert ctx.ssh.commands[-1] == (
        "systemctl daemon-reload && systemctl stop rabbitmq-server.service && "
        "systemctl stop epmd.service epmd.socket && "
        "systemctl start epmd.socket rabbitmq-server.service")


def test_broker_configuration_in_place_is_a_no_op(ctx, project):
    hashes = {f"sha.{p}": sha(t) for p, t in recipes.RABBITMQ_FILES.items()}
    ctx.ssh.reply("cd /\n", facts(**hashes))
    _, outcome = run_step(host.BrokerConfig(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED


def test_broker_is_enabled_and_started(ctx, project):
    ctx.ssh.reply("cd /\n", facts(listen="127.0.0.1:5672"))
    change, _ = run_step(host.Broker(target(ctx, project)), ctx)
    assert change.details == ["enable rabbitmq-server.service", "start rabbitmq-server.service"]
    assert ctx.ssh.commands[1] == ("systemctl enable rabbitmq-server.service >/dev/null 2>&1 "
                                   "&& systemctl start rabbitmq-server.service")


def test_broker_listening_beyond_loopback_is_restarted_and_checked(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"enabled.rabbitmq-server.service": "enabled",
                                     "active.rabbitmq-server.service": "active",
                                     "listen": "0.0.0.0:25672 127.0.0.1:5672"}))
    with pytest.raises(HostError, match="still listens on 0.0.0.0:25672"):
        run_step(host.Broker(target(ctx, project)), ctx)
    assert "systemctl stop rabbitmq-server.service" in ctx.ssh.commands[1]


def test_broker_on_loopback_is_a_no_op(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"enabled.rabbitmq-server.service": "enabled",
                                     "active.rabbitmq-server.service": "active",
                                     "listen": "127.0.0.1:5672 [::1]:5672"}))
    _, outcome = run_step(host.Broker(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED


def test_redis_gets_a_loopback_bind_line(tmp_path, project):
    ctx = make_ctx(tmp_path, project, os="al2023")
    ctx.ssh.reply("cd /\n", facts(**{"enabled.redis6.service": "enabled",
                                     "active.redis6.service": "active",
                                     "listen": "127.0.0.1:6379", "bind": "bind 0.0.0.0"}))
    run_step(host.Broker(target(ctx, project)), ctx)
    assert ctx.ssh.commands[1] == ("echo 'bind 127.0.0.1 -::1' >> /etc/redis6/redis6.conf && "
                                   "systemctl enable redis6.service >/dev/null 2>&1 && "
                                   "systemctl restart redis6.service")


# ------------------------------------------------------------------------ .env


def test_env_file_is_uploaded_private_to_the_service_user(ctx, project):
    change, _ = run_step(host.EnvFile(target(ctx, project)), ctx)
    assert change.action == engine.CREATE
    data, mode, owner = ctx.ssh.files["/srv/helios/shared/.env"]
    assert data == (ctx.out_dir / ".env").read_text()
    assert (mode, owner) == (0o600, "helios")
    assert "systemctl restart" in ctx.ssh.commands[-1]


def test_env_file_unchanged_is_a_no_op(ctx, project):
    text = (ctx.out_dir / ".env").read_text()
    ctx.ssh.reply("cd /\n", facts(sha=sha(text), stat="helios 600"))
    _, outcome = run_step(host.EnvFile(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED and not ctx.ssh.files


def test_env_file_readable_by_others_is_rewritten(ctx, project):
    text = (ctx.out_dir / ".env").read_text()
    ctx.ssh.reply("cd /\n", facts(sha=sha(text), stat="helios 644"))
    change, _ = run_step(host.EnvFile(target(ctx, project)), ctx)
    assert change.action == engine.UPDATE and ctx.ssh.files["/srv/helios/shared/.env"][1] == 0o600


# ------------------------------------------------------------------------ release


def release_id(ctx, project):
    return host.Release(target(ctx, project)).source(ctx)["id"]


def test_new_release_is_uploaded_and_installed_with_uv(ctx, project):
    change, _ = run_step(host.Release(target(ctx, project)), ctx)
    ident = release_id(ctx, project)
    assert change.action == engine.CREATE and ident in change.details[0]
    script = ctx.ssh.commands[-1]
    rel = re.search(r"mkdir -p (/srv/helios/releases/\d{14}-" + ident + ")/", script).group(1)
    assert ctx.facts["host_release_dir"] == rel
    assert f"tar -xzf /tmp/helios-aws.test/2 -C {rel} --no-same-owner" in script
    assert f"UV_PROJECT_ENVIRONMENT={rel}/.venv" in script
    assert "UV_PYTHON=/usr/bin/python3.13" in script
    assert "/srv/helios/tools/uv/bin/uv sync --frozen --no-dev" in script
    assert re.search(r"uv pip install --quiet --python \S+/.venv/bin/python "
                     r"\S+/helios_aws-[\w.]+-py3-none-any.whl gunicorn django-environ\n", script)
    assert f"ln -s ../../shared/media {rel}/media" in script
    assert script.index("uv sync") < script.index("touch .helios-aws/installed")
    # The wheel is staged first, then the project's files.
    assert ctx.ssh.staged[0][:2] == b"PK" and ctx.ssh.staged[1][:2] == b"\x1f\x8b"


def test_release_with_redis_adds_the_redis_package(tmp_path, project):
    ctx = make_ctx(tmp_path, project, os="al2023")
    run_step(host.Release(target(ctx, project)), ctx)
    assert "gunicorn django-environ redis\n" in ctx.ssh.commands[-1]


def test_release_with_requirements_uses_pip(tmp_path, project):
    (project.root / "uv.lock").unlink()
    (project.root / "requirements.txt").write_text("django\n")
    project = Project(**{**project.__dict__, "dependency_source": "pip"})
    ctx = make_ctx(tmp_path, project)
    run_step(host.Release(target(ctx, project)), ctx)
    script = ctx.ssh.commands[-1]
    assert "/usr/bin/python3.13 -m venv " in script
    assert "pip install -q --disable-pip-version-check -r requirements.txt " in script
    assert "uv sync" not in script


def test_release_from_git_clones_the_resolved_commit(tmp_path, project):
    ctx = make_ctx(tmp_path, project, {"git_url": "https://git.example.org/helios.git",
                                       "git_ref": "v2"})
    commit = "0123456789abcdef0123456789abcdef01234567"
    ctx.ssh.reply("git ls-remote", f"{commit}\trefs/tags/v2\n")
    change, _ = run_step(host.Release(target(ctx, project)), ctx)
    assert "https://git.example.org/helios.git v2 (0123456789ab)" in change.details[0]
    script = ctx.ssh.commands[-1]
    assert f"git fetch -q --depth 1 https://git.example.org/helios.git {commit}" in script
    assert "if [ -f uv.lock ]; then" in script
    assert len(ctx.ssh.staged) == 1  # only the wheel: no local files travel


def test_installed_release_is_a_no_op(ctx, project):
    ident = release_id(ctx, project)
    ctx.ssh.reply("cd /\n", facts(ready=f"20260101000000-{ident}",
                                  current=f"releases/20260101000000-{ident}"))
    _, outcome = run_step(host.Release(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED and not ctx.ssh.staged
    assert ctx.facts["host_release_dir"] == f"/srv/helios/releases/20260101000000-{ident}"


def test_half_installed_release_is_removed_and_redone(ctx, project):
    ident = release_id(ctx, project)
    ctx.ssh.reply("cd /\n", facts(partial=f"20260101000000-{ident}"))
    run_step(host.Release(target(ctx, project)), ctx)
    assert f"rm -rf /srv/helios/releases/20260101000000-{ident}" in ctx.ssh.commands[-1]


def test_changed_code_makes_a_new_release(ctx, project):
    before = release_id(ctx, project)
    (project.root / "helios" / "views.py").write_text("x = 1\n")
    ctx.facts.clear()
    assert release_id(ctx, project) != before


# ------------------------------------------------------------------------ migrate


def test_migrate_runs_as_the_service_user_with_the_env_file(ctx, project):
    ctx.facts["host_release_dir"] = "/srv/helios/releases/20260101000000-abc"
    ctx.ssh.reply("cd /\n", facts(db="d41d8", done=""))
    change, _ = run_step(host.Migrate(target(ctx, project)), ctx)
    assert change.action == engine.UPDATE
    rel = "/srv/helios/releases/20260101000000-abc"
    assert ctx.ssh.commands[1] == (
        f"cd {rel} && runuser -u helios -- env HELIOS_ENV_FILE=/srv/helios/shared/.env "
        "DJANGO_SETTINGS_MODULE=helios_aws.settings_overrides.production "
        f"{rel}/.venv/bin/python manage.py migrate --no-input")
    assert ctx.ssh.commands[-1] == f"echo d41d8 > {rel}/.helios-aws/migrated"


def test_migrated_release_is_a_no_op(ctx, project):
    ctx.facts["host_release_dir"] = "/srv/helios/releases/20260101000000-abc"
    ctx.ssh.reply("cd /\n", facts(db="4f2a", done="4f2a"))
    _, outcome = run_step(host.Migrate(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED and len(ctx.ssh.commands) == 1


# ------------------------------------------------------------------------ switch


def test_switch_points_current_at_the_new_release_then_prunes(ctx, project):
    ctx.facts["host_release_dir"] = "/srv/helios/releases/20260102000000-new"
    ctx.ssh.reply("cd /\n", facts(current="releases/20260101000000-old"))
    change, _ = run_step(host.Switch(target(ctx, project)), ctx)
    assert change.details == ["current -> releases/20260102000000-new "
                              "(was releases/20260101000000-old)"]
    script = ctx.ssh.commands[-1].splitlines()
    assert script[1:3] == [
        "ln -sfn releases/20260102000000-new /srv/helios/current.helios-aws-new",
        "mv -fT /srv/helios/current.helios-aws-new /srv/helios/current"]
    assert "systemctl restart" in script[3]
    assert script[5].endswith("| grep -vxF 20260102000000-new | grep -vxF 20260101000000-old "
                              "| tail -n +2 | xargs -r rm -rf --")


def test_switch_already_done_is_a_no_op(ctx, project):
    ctx.facts["host_release_dir"] = "/srv/helios/releases/20260102000000-new"
    ctx.ssh.reply("cd /\n", facts(current="releases/20260102000000-new"))
    _, outcome = run_step(host.Switch(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED


def test_pruning_keeps_the_configured_number_of_releases(tmp_path, project):
    """The prune pipeline, run by a real shell over real directories."""
    ctx = make_ctx(tmp_path, project, {"keep_releases": 3})
    releases = tmp_path / "srv" / "releases"
    for name in ("20260101000000-a", "20260102000000-b", "20260103000000-c",
                 "20260104000000-d", "20260105000000-e"):
        (releases / name).mkdir(parents=True)
    ctx.facts["host_release_dir"] = str(releases / "20260105000000-e")
    step = host.Switch(target(ctx, project))
    step.apply(ctx, {"current": "releases/20260104000000-d"}, engine.Change(engine.UPDATE))
    prune = ctx.ssh.commands[-1].splitlines()[-1]
    subprocess.run(["sh", "-c", prune], cwd=releases, check=True)
    assert sorted(p.name for p in releases.iterdir()) == [
        "20260103000000-c", "20260104000000-d", "20260105000000-e"]


# ------------------------------------------------------------------------ units

UNITS_RUNNING = {f"{k}.{u}": v for u in host.APP_UNITS
                 for k, v in (("enabled", "enabled"), ("active", "active"))}


def unit_hashes(ctx):
    return {f"sha./etc/systemd/system/{p.name}": sha(p.read_text())
            for p in (ctx.out_dir / "systemd").iterdir()}


def test_units_are_installed_enabled_and_started(ctx, project):
    change, _ = run_step(host.Units(target(ctx, project)), ctx)
    assert change.action == engine.CREATE
    assert sorted(ctx.ssh.files) == sorted(
        f"/etc/systemd/system/{n}" for n in configure.ARTIFACTS if n.startswith("systemd/")
        for n in [n.split("/")[1]])
    assert ctx.ssh.commands[-1].splitlines() == [
        "set -e", "systemctl daemon-reload",
        "systemctl enable gunicorn.socket gunicorn.service helios-celery.service >/dev/null 2>&1",
        "systemctl try-restart gunicorn.service helios-celery.service",
        "systemctl start gunicorn.socket gunicorn.service helios-celery.service"]


def test_units_in_place_and_running_is_a_no_op(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**unit_hashes(ctx), **UNITS_RUNNING))
    _, outcome = run_step(host.Units(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED and not ctx.ssh.files


def test_changed_socket_unit_stops_the_service_first(ctx, project):
    hashes = {**unit_hashes(ctx), "sha./etc/systemd/system/gunicorn.socket": "old"}
    ctx.ssh.reply("cd /\n", facts(**hashes, **UNITS_RUNNING))
    run_step(host.Units(target(ctx, project)), ctx)
    assert list(ctx.ssh.files) == ["/etc/systemd/system/gunicorn.socket"]
    assert "systemctl stop gunicorn.service gunicorn.socket" in ctx.ssh.commands[-1]
    assert "try-restart" not in ctx.ssh.commands[-1]


def test_a_stopped_worker_is_started(ctx, project):
    running = {**UNITS_RUNNING, "active.helios-celery.service": "failed"}
    ctx.ssh.reply("cd /\n", facts(**unit_hashes(ctx), **running))
    change, _ = run_step(host.Units(target(ctx, project)), ctx)
    assert change.details == ["start helios-celery.service"]
    assert not ctx.ssh.files


# ------------------------------------------------------------------------ nginx

NGINX_UP = {"enabled.nginx.service": "enabled", "active.nginx.service": "active"}


def site(ctx, kind):
    return (ctx.out_dir / "nginx" / f"helios-{kind}.conf").read_text()


def test_http_site_comes_first(ctx, project):
    change, _ = run_step(host.NginxSite(target(ctx, project), https=False), ctx)
    assert change.action == engine.CREATE
    assert ctx.ssh.staged == [site(ctx, "http").encode()]
    assert "nginx -t" in ctx.ssh.commands[-1]


def test_http_site_is_not_put_back_over_the_https_one(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"sha./etc/nginx/conf.d/helios.conf": sha(site(ctx, "https")),
                                     "cert": "yes"}, **NGINX_UP))
    _, outcome = run_step(host.NginxSite(target(ctx, project), https=False), ctx)
    assert outcome == engine.UNCHANGED


def test_https_site_needs_the_certificate(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"sha./etc/nginx/conf.d/helios.conf": sha(site(ctx, "http"))},
                                  **NGINX_UP))
    with pytest.raises(HostError, match="No certificate"):
        run_step(host.NginxSite(target(ctx, project), https=True), ctx)
    assert not ctx.ssh.staged


def test_https_site_replaces_the_http_one(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"sha./etc/nginx/conf.d/helios.conf": sha(site(ctx, "http")),
                                     "cert": "yes"}, **NGINX_UP))
    change, _ = run_step(host.NginxSite(target(ctx, project), https=True), ctx)
    assert change.action == engine.UPDATE
    assert ctx.ssh.staged == [site(ctx, "https").encode()]


def test_https_site_in_place_is_a_no_op(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"sha./etc/nginx/conf.d/helios.conf": sha(site(ctx, "https")),
                                     "cert": "yes"}, **NGINX_UP))
    _, outcome = run_step(host.NginxSite(target(ctx, project), https=True), ctx)
    assert outcome == engine.UNCHANGED


@pytest.fixture
def fake_nginx_host(tmp_path):
    """A directory with stand-ins for nginx and systemctl on PATH: `nginx -t` fails when
    the site holds the word "broken"; systemctl calls are recorded."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    site = tmp_path / "conf.d" / "helios.conf"
    site.parent.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "nginx").write_text(
        f"#!/bin/sh\nif grep -q broken {site}; then echo 'nginx: [emerg] unknown directive "
        "\"broken\"' >&2; exit 1; fi\necho 'nginx: configuration file test is successful' >&2\n")
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\necho \"$*\" >> {calls}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    # install(1) with -o root needs root; the test runs the script as it runs on a host.
    if os.geteuid() != 0:
        pytest.skip("install -o root needs root")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    return site, calls, env


def test_a_site_nginx_rejects_never_replaces_the_good_one(fake_nginx_host, tmp_path):
    site, calls, env = fake_nginx_host
    site.write_text("server { good }\n")
    staged = tmp_path / "staged"
    staged.write_text("server { broken }\n")
    result = subprocess.run(["sh", "-c", host.install_site_script(site, staged)], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "unknown directive" in result.stderr and "previous one is kept" in result.stderr
    assert site.read_text() == "server { good }\n"
    assert not calls.exists()  # nginx was not reloaded
    assert sorted(p.name for p in site.parent.iterdir()) == ["helios.conf"]


def test_a_good_site_is_installed_and_nginx_reloaded(fake_nginx_host, tmp_path):
    site, calls, env = fake_nginx_host
    site.write_text("server { old }\n")
    staged = tmp_path / "staged"
    staged.write_text("server { new }\n")
    subprocess.run(["sh", "-c", host.install_site_script(site, staged)], env=env, check=True)
    assert site.read_text() == "server { new }\n"
    assert calls.read_text().splitlines()[0] == "enable nginx"
    assert sorted(p.name for p in site.parent.iterdir()) == ["helios.conf"]


def test_a_rejected_first_site_is_removed(fake_nginx_host, tmp_path):
    site, calls, env = fake_nginx_host
    staged = tmp_path / "staged"
    staged.write_text("broken\n")
    result = subprocess.run(["sh", "-c", host.install_site_script(site, staged)], env=env,
                            capture_output=True)
    assert result.returncode == 1 and not site.exists()


# ------------------------------------------------------------------------ certificate


def test_certificate_is_requested_through_the_webroot(tmp_path, project):
    ctx = make_ctx(tmp_path, project, {"server": "https://10.0.2.2:14000/dir"})
    change, _ = run_step(host.Certificate(target(ctx, project)), ctx)
    assert change.action == engine.CREATE
    assert ctx.ssh.commands[-1] == (
        "cd / && REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt certbot certonly "
        "--non-interactive --agree-tos --webroot -w /var/www/acme -d vote.example.org "
        "--cert-name vote.example.org --email elections@example.org "
        "--server https://10.0.2.2:14000/dir")


def test_certificate_from_another_server_is_replaced(tmp_path, project):
    ctx = make_ctx(tmp_path, project, {"server": "https://acme.example.net/dir"})
    ctx.ssh.reply("cd /\n", facts(cert="yes", server="https://10.0.2.2:14000/dir"))
    change, _ = run_step(host.Certificate(target(ctx, project)), ctx)
    assert change.action == engine.UPDATE
    assert ctx.ssh.commands[-1].endswith("--server https://acme.example.net/dir --force-renewal")


def test_certificate_present_is_a_no_op(ctx, project):
    ctx.ssh.reply("cd /\n", facts(cert="yes", server="https://acme.example.net/dir"))
    _, outcome = run_step(host.Certificate(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED


def test_renewal_enables_our_timer_and_proves_a_dry_run(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"enabled.certbot.timer": "enabled", "proof": "abc"}))
    change, _ = run_step(host.Renewal(target(ctx, project)), ctx)
    assert change.details == ["enable and start helios-certbot-renew.timer",
                              "disable certbot.timer (helios-certbot-renew.timer replaces it)",
                              "certbot renew --dry-run"]
    script = ctx.ssh.commands[-1].splitlines()
    assert script[2] == "systemctl disable --now certbot.timer >/dev/null 2>&1 || true"
    assert script[3] == "systemctl enable --now helios-certbot-renew.timer >/dev/null 2>&1"
    assert script[4].endswith("certbot renew --dry-run --non-interactive "
                              "--no-random-sleep-on-renew --cert-name vote.example.org")
    assert script[5].endswith("> /var/lib/helios-aws/renew-dry-run")


def test_renewal_already_proven_is_a_no_op(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"enabled.helios-certbot-renew.timer": "enabled",
                                     "active.helios-certbot-renew.timer": "active",
                                     "enabled.certbot.timer": "disabled",
                                     "proof": "abc", "done": "abc"}))
    _, outcome = run_step(host.Renewal(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED


# ------------------------------------------------------------------------ liveness


def test_liveness_answering_is_a_no_op(ctx, project):
    ctx.ssh.reply("curl", "200")
    change, outcome = run_step(host.Liveness(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED
    assert ctx.ssh.commands == [
        "curl -sS -o /dev/null -w '%{http_code}' --max-time 60 "
        "--cacert /etc/letsencrypt/live/vote.example.org/fullchain.pem "
        "--resolve vote.example.org:443:127.0.0.1 "
        "https://vote.example.org/helios/elections/params"]


def test_liveness_waits_for_a_starting_site_and_changes_nothing(ctx, project):
    ctx.ssh.reply("curl", "502")
    change, outcome = run_step(host.Liveness(target(ctx, project)), ctx)
    assert change.action == engine.UPDATE and outcome == engine.UNCHANGED
    assert ctx.ssh.commands[-1].startswith("for i in $(seq 36); do")
    assert "journalctl -u gunicorn.service" in ctx.ssh.commands[-1]


# ------------------------------------------------------------------------ release files


def test_project_files_skip_secrets_caches_and_the_output_dir(tmp_path):
    root = tmp_path / "p"
    for rel in ("manage.py", ".env", "helios/x.py", "helios/__pycache__/x.pyc",
                ".venv/bin/python", "deploy/state.json", ".git/HEAD", "helios/.env"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    (root / ".git").rename(root / "not-git")  # a plain directory, not a checkout
    files = release.project_files(root, exclude=[root / "deploy"])
    assert files == ["helios/.env", "helios/x.py", "manage.py", "not-git/HEAD"]


def test_project_files_of_a_git_checkout_are_the_tracked_ones(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path / "p"
    root.mkdir()
    (root / "manage.py").write_text("x")
    (root / "untracked.py").write_text("x")
    (root / "deploy").mkdir()
    (root / "deploy" / "deployment.json").write_text("{}")
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "manage.py", "deploy/deployment.json"], check=True)
    assert release.project_files(root, exclude=[root / "deploy"]) == ["manage.py"]


def test_digest_ignores_timestamps_but_not_the_executable_bit(tmp_path):
    (tmp_path / "a.py").write_text("x")
    first = release.digest(tmp_path, ["a.py"])
    os.utime(tmp_path / "a.py", (0, 0))
    assert release.digest(tmp_path, ["a.py"]) == first
    (tmp_path / "a.py").chmod(0o755)
    assert release.digest(tmp_path, ["a.py"]) != first


def test_wheel_is_deterministic_and_installable_metadata(tmp_path):
    import zipfile
    name, data = release.wheel()
    assert release.wheel() == (name, data)
    assert re.fullmatch(r"helios_aws-[\w.]+-py3-none-any\.whl", name)
    path = tmp_path / name
    path.write_bytes(data)
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = wheel.read(info).decode()
    assert "helios_aws/host/steps.py" in names
    assert "helios_aws/templates/helios_aws/gunicorn.service" in names
    assert not any("__pycache__" in n for n in names)
    assert "Name: helios-aws" in metadata and "Requires-Dist: django-environ" in metadata
    assert "extra ==" not in metadata


def test_archive_holds_the_files_owned_by_root(tmp_path):
    import io
    import tarfile
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o775)
    (tmp_path / "a.txt").write_text("a")
    with tarfile.open(fileobj=io.BytesIO(release.archive(tmp_path, ["a.txt", "run.sh"]))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert (members["run.sh"].mode, members["a.txt"].mode) == (0o755, 0o644)
    assert {m.uname for m in members.values()} == {"root"}


def test_no_host_to_connect_to_is_explained(tmp_path, project):
    ctx = make_ctx(tmp_path, project)
    ctx.ssh = None
    with pytest.raises(HostError, match="no server to connect to"):
        host.connection(ctx)


def test_trusted_fingerprints_come_from_the_flag_and_the_aws_half(ctx):
    ctx.options["trust_host_key"] = f"{FINGERPRINT},SHA256:{'B' * 43}"
    ctx.facts["host_fingerprints"] = ["SHA256:" + "A" * 43]
    assert host.pinned_fingerprints(ctx) == [FINGERPRINT, "SHA256:" + "B" * 43,
                                             "SHA256:" + "A" * 43]


def test_a_malformed_fingerprint_is_refused(ctx):
    ctx.options["trust_host_key"] = "MD5:aa:bb"
    with pytest.raises(HostError, match="not an OpenSSH SHA256"):
        host.pinned_fingerprints(ctx)


def test_layout_paths_match_the_rendered_units(ctx, project):
    unit = (ctx.out_dir / "systemd" / "gunicorn.service").read_text()
    assert "EnvironmentFile=/srv/helios/shared/.env" in unit
    assert "WorkingDirectory=/srv/helios/current" in unit
    assert Path(host.Target(ctx, project).layout.env_file).as_posix() == "/srv/helios/shared/.env"
