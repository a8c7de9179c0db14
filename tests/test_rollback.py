"""--releases and --rollback against a release tree laid out on this machine.

The scripts run for real in ``sh`` on a server tree under a temporary prefix (the layout
the host steps use, moved by ``host_prefix``). The release rolled back to is the fixture
project, whose Python (this one) reads the applied migrations from a real PostgreSQL
through Django, with the deployed .env, as on a server; the plan tests then give the
applied set directly. The VM test rolls back a real server.
"""

import http.server
import os
import shutil
import ssl
import subprocess
import sys
import threading

import pytest

import rig
from fixtures import FIXTURE_DIR, helios_env, make_fixture_project, run_manage
from helios_aws.errors import HostError
from helios_aws.host import checks, rollback
from helios_aws.host.ssh import Result
from test_host_steps import make_ctx, project  # noqa: F401  (a fixture)

OLDEST, OLDER, NEWEST, UNFINISHED = (
    "20261101090000-aaaaaaaaaaaaaaaa", "20261115090000-bbbbbbbbbbbbbbbb",
    "20261201090000-cccccccccccccccc", "20261202090000-dddddddddddddddd")


class LocalShell:
    """Runs the scripts in this machine's sh, as the SSH connection runs them as root."""

    label = user = "local"
    host_key_fingerprint = ""

    def __init__(self):
        self.commands = []

    def run(self, command, sudo=False, check=True, input=None, timeout=None, step=None,
            on_line=None):
        self.commands.append(command)
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                              timeout=60)
        if check and done.returncode:
            raise HostError(f"exit {done.returncode}: {done.stderr}")
        return Result(command, done.returncode, done.stdout, done.stderr)

    def close(self):
        pass


DATABASE = "helios_rollback"


@pytest.fixture(scope="module")
def database_url(tmp_path_factory, postgres):
    """A database migrated by the fixture project (its django_migrations filled)."""
    rig.run([rig.PG_BIN / "createdb", DATABASE], env=dict(os.environ, **postgres.env))
    socket_dir = str(postgres.socket_dir).replace("/", "%2F")
    url = f"postgres://postgres@{socket_dir}:{postgres.port}/{DATABASE}"
    migrated = run_manage(make_fixture_project(tmp_path_factory.mktemp("rollback"),
                                               "requirements"),
                          "migrate", "--no-input", env=helios_env(DATABASE_URL=url))
    assert migrated.returncode == 0, migrated.stderr
    return url


@pytest.fixture
def server(tmp_path, project, database_url):  # noqa: F811
    """A server tree: three installed releases and one half-installed, each knowing some
    migrations, ``current`` at the second newest installed one. The oldest is the fixture
    project with a virtualenv (this Python), the deployed .env names the database. The
    service user is root: this machine's Python is out of any other account's reach."""
    prefix = tmp_path / "server"
    ctx = make_ctx(tmp_path, project, host_prefix=str(prefix))
    ctx.deployment.service_user = "root"
    ctx.ssh = LocalShell()
    releases = prefix / "srv/helios/releases"
    records = prefix / "var/lib/helios-aws/releases"
    known = {OLDEST: ["0001_initial"], OLDER: ["0001_initial", "0002_voters"],
             NEWEST: ["0001_initial", "0002_voters", "0003_audit"],
             UNFINISHED: ["0001_initial"]}
    for name, migrations in known.items():
        app = releases / name / "helios" / "migrations"
        app.mkdir(parents=True)
        (app / "__init__.py").write_text("")
        for migration in migrations:
            (app / f"{migration}.py").write_text("")
        contrib = releases / name / ".venv/lib/python3.13/site-packages/django/contrib/auth"
        (contrib / "migrations").mkdir(parents=True)
        (contrib / "migrations" / "0001_initial.py").write_text("")
        (records / name).mkdir(parents=True)
        (records / name / "source").write_text(f"12 files from /home/op/helios ({name[-1]})\n")
        if name != UNFINISHED:
            (records / name / "installed").write_text("")
    os.symlink(f"releases/{OLDER}", prefix / "srv/helios/current")
    shutil.copytree(FIXTURE_DIR, releases / OLDEST, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    python = releases / OLDEST / ".venv/bin/python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    env_file = prefix / "srv/helios/config/.env"
    env_file.parent.mkdir(parents=True)
    env_file.write_text(f"DATABASE_URL={database_url}\n")
    env_file.chmod(0o600)
    ctx.prefix, ctx.env_file = prefix, env_file
    return ctx


@pytest.fixture
def site_answers(server, local_ca):
    """An HTTPS server on loopback answering 200 on the liveness page with the layout's
    certificate, where the rollback's liveness check looks (a stand-in for nginx and
    gunicorn: the VM test rolls back a real site)."""
    issued = local_ca.issue(server.deployment.domain)
    certificate = server.prefix / "etc/letsencrypt/live" / server.deployment.domain
    certificate.mkdir(parents=True)
    shutil.copyfile(issued.fullchain, certificate / "fullchain.pem")

    class Live(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/helios/elections/params" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Live)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.fullchain, issued.key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    server.deployment.https_port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def applied(*names):
    return {"auth.0001_initial", *(f"helios.{n}" for n in names)}


def test_releases_lists_every_release_newest_first_and_marks_the_serving_one(server):
    [_, releases] = rollback.steps(server, "releases")
    current = releases.read(server)
    assert [r["name"] for r in current["releases"]] == [UNFINISHED, NEWEST, OLDER, OLDEST]
    assert current["serving"] == OLDER
    lines = [rollback.describe(r, current["serving"]) for r in current["releases"]]
    assert "serving" in lines[2] and "serving" not in "".join(lines[:2] + lines[3:])
    assert "not installed" in lines[0] and "12 files from /home/op/helios (a)" in lines[3]
    by_name = {r["name"]: r for r in current["releases"]}
    assert by_name[NEWEST]["migrations"] == {"auth.0001_initial", "helios.0001_initial",
                                             "helios.0002_voters", "helios.0003_audit"}


def test_rollback_switches_to_the_newest_installed_release_before_the_serving_one(
        server, site_answers):
    [_, step] = rollback.steps(server, "rollback")
    current = step.read(server)
    current["applied"] = applied("0001_initial")
    change = step.plan(server, current)
    assert change.details == [f"current -> releases/{OLDEST} (was releases/{OLDER}), "
                              "restart the app"]
    step.apply(server, current, change)
    assert os.readlink(server.prefix / "srv/helios/current") == f"releases/{OLDEST}"
    switched = [c for c in server.ssh.commands if f"releases/{OLDEST}" in c and "mv -fT" in c]
    assert len(switched) == 1 and "restart" in switched[0]
    # The same liveness check as a deploy's last step came after the switch.
    assert "/helios/elections/params" in server.ssh.commands[-1]


def test_rollback_is_refused_while_the_database_has_migrations_the_release_lacks(server):
    [_, step] = rollback.steps(server, "rollback")
    current = step.read(server)
    current["applied"] = applied("0001_initial", "0002_voters")
    with pytest.raises(HostError) as refused:
        step.plan(server, current)
    assert f"release {OLDEST} does not know: helios.0002_voters." in refused.value.message
    assert "manage.py migrate APP PREVIOUS_MIGRATION" in refused.value.hint
    assert os.readlink(server.prefix / "srv/helios/current") == f"releases/{OLDER}"


def test_rollback_without_an_older_installed_release_is_refused(server):
    os.remove(server.prefix / "var/lib/helios-aws/releases" / OLDEST / "installed")
    [_, step] = rollback.steps(server, "rollback")
    current = step.read(server)
    with pytest.raises(HostError, match=f"No installed release older than {OLDER}"):
        step.plan(server, current)


def test_a_release_directory_not_of_the_release_form_is_never_listed(server):
    (server.prefix / "srv/helios/releases/20261130090000-zzzz; rm -rf ~").mkdir()
    [_, releases] = rollback.steps(server, "releases")
    assert len(releases.read(server)["releases"]) == 4


def test_the_applied_migrations_are_read_through_the_release_as_helios_reads_them(server):
    [_, step] = rollback.steps(server, "rollback")

    current = step.read(server)

    assert {"helios.0001_initial", "helios.0002_voting", "contenttypes.0001_initial",
            "sessions.0001_initial"} <= current["applied"]


@pytest.mark.parametrize("broken, said", [
    ("database", 'database "no_such_database" does not exist'),
    ("virtualenv", "No such file or directory"),
    ("table", 'relation "django_migrations" does not exist'),
])
def test_a_rollback_that_cannot_read_the_migrations_is_refused_naming_them(
        server, postgres, broken, said):
    if broken == "database":
        server.env_file.write_text(
            server.env_file.read_text().replace(DATABASE, "no_such_database"))
    elif broken == "virtualenv":
        (server.prefix / "srv/helios/releases" / OLDEST / ".venv/bin/python").unlink()
    else:
        rig.run([rig.PG_BIN / "createdb", "helios_empty"], env=dict(os.environ, **postgres.env))
        server.env_file.write_text(
            server.env_file.read_text().replace(DATABASE, "helios_empty"))
    try:
        [_, step] = rollback.steps(server, "rollback")
        with pytest.raises(HostError) as refused:
            step.read(server)
    finally:
        if broken == "table":
            rig.run([rig.PG_BIN / "dropdb", "helios_empty"],
                    env=dict(os.environ, **postgres.env))

    assert refused.value.message.startswith(
        "Cannot read the migrations applied to Helios's database (table django_migrations, "
        f"through release {OLDEST} as root with {server.env_file}): ")
    assert said in refused.value.message
    assert broken != "virtualenv" or f"{OLDEST}/.venv/bin/python" in refused.value.message
    assert "so it is refused" in refused.value.message
    assert os.readlink(server.prefix / "srv/helios/current") == f"releases/{OLDER}"


def test_a_rollback_to_a_release_that_does_not_answer_switches_back(server, monkeypatch):
    # Nothing serves the site here: the release rolled back to never answers.
    monkeypatch.setattr(checks.Liveness, "wait_seconds", 5)
    [_, step] = rollback.steps(server, "rollback")
    current = step.read(server)
    current["applied"] = applied("0001_initial")
    change = step.plan(server, current)

    with pytest.raises(HostError) as failed:
        step.apply(server, current, change)

    assert failed.value.message == (
        f"Release {OLDEST} did not answer on the liveness page after the switch (last "
        f"status: 000); switched back to {OLDER}, which does not answer either.")
    assert os.readlink(server.prefix / "srv/helios/current") == f"releases/{OLDER}"
