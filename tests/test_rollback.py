"""--releases and --rollback against a release tree laid out on this machine.

The scripts run for real in ``sh`` on a server tree under a temporary prefix (the layout
the host steps use, moved by ``host_prefix``); the database's applied migrations are given
to the plan directly, since no cluster runs here. The VM test rolls back a real server.
"""

import os
import subprocess

import pytest

from helios_aws.errors import HostError
from helios_aws.host import rollback
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


@pytest.fixture
def server(tmp_path, project):  # noqa: F811
    """A server tree: three installed releases and one half-installed, each knowing some
    migrations, ``current`` at the second newest installed one."""
    prefix = tmp_path / "server"
    ctx = make_ctx(tmp_path, project, host_prefix=str(prefix))
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
    ctx.prefix = prefix
    return ctx


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


def test_rollback_switches_to_the_newest_installed_release_before_the_serving_one(server):
    [_, step] = rollback.steps(server, "rollback")
    current = step.read(server)
    current["applied"] = applied("0001_initial")
    change = step.plan(server, current)
    assert change.details == [f"current -> releases/{OLDEST} (was releases/{OLDER}), "
                              "restart the app"]
    step.apply(server, current, change)
    assert os.readlink(server.prefix / "srv/helios/current") == f"releases/{OLDEST}"
    assert f"{OLDEST}" in server.ssh.commands[-1] and "restart" in server.ssh.commands[-1]


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
