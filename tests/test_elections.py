"""The one definition of an open election (helios_aws/elections.py), against a real
PostgreSQL holding elections written the way Helios writes them: through the fixture's
Django models, with naive UTC times, USE_TZ off and the session in TIME_ZONE; never with
SQL ``now()``.

Each time zone gets one Django process that creates an election just before and just
after each boundary, then the answer is read three ways and must agree: through Django
(``elections.current()``), through psql as the restore guard on the host reads it
(``elections.read``), and by the fixture model's own rule (Helios's, in the fixture's
words).
"""

import datetime
import json
import os
import subprocess

import pytest

import rig
from fixtures import helios_env, make_fixture_project, run_manage
from helios_aws import backup, elections

DATABASE = "helios_elections"
MARGIN = 300  # seconds either side of a boundary: far from the test's own duration
HOUR, DAY = 3600, 86400
ZONES = ("America/Los_Angeles", "Asia/Tokyo", "UTC")

# name: (fields as seconds from now, or a value; expected state or None if not listed,
# the closing time expected as seconds from now)
CASES = {
    "draft": ({}, None, None),
    "frozen-no-dates": ({"frozen_at": -HOUR}, "open", None),
    "starts-just-passed": ({"frozen_at": -HOUR, "voting_starts_at": -MARGIN,
                            "voting_ends_at": DAY}, "open", DAY),
    "starts-soon": ({"frozen_at": -HOUR, "voting_starts_at": MARGIN,
                     "voting_ends_at": DAY}, "upcoming", DAY),
    "scheduled-not-frozen": ({"voting_starts_at": -MARGIN, "voting_ends_at": DAY},
                             "upcoming", DAY),
    "ends-soon": ({"frozen_at": -DAY, "voting_starts_at": -HOUR,
                   "voting_ends_at": MARGIN}, "open", MARGIN),
    "ended-just-now": ({"frozen_at": -DAY, "voting_starts_at": -HOUR,
                        "voting_ends_at": -MARGIN}, None, None),
    "extended-open": ({"frozen_at": -DAY, "voting_starts_at": -HOUR, "voting_ends_at": -HOUR,
                       "voting_extended_until": MARGIN}, "open", MARGIN),
    "extension-over": ({"frozen_at": -DAY, "voting_starts_at": -HOUR,
                        "voting_ends_at": -HOUR, "voting_extended_until": -MARGIN},
                       None, None),
    "forced-start": ({"frozen_at": -HOUR, "voting_starts_at": DAY,
                      "voting_started_at": -MARGIN, "voting_ends_at": 2 * DAY},
                     "open", 2 * DAY),
    "forced-start-later": ({"frozen_at": -HOUR, "voting_starts_at": DAY,
                            "voting_started_at": MARGIN}, "upcoming", None),
    "forced-end": ({"frozen_at": -DAY, "voting_starts_at": -HOUR, "voting_ends_at": DAY,
                    "voting_ended_at": -MARGIN}, None, None),
    "forced-end-later": ({"frozen_at": -DAY, "voting_starts_at": -HOUR, "voting_ends_at": DAY,
                          "voting_ended_at": MARGIN}, "open", MARGIN),
    "tallied": ({"frozen_at": -DAY, "voting_starts_at": -HOUR, "voting_ends_at": DAY,
                 "encrypted_tally": "{}"}, None, None),
    "archived-open": ({"frozen_at": -DAY, "voting_starts_at": -HOUR, "voting_ends_at": DAY,
                       "archived_at": -MARGIN}, "open", DAY),
}

DRIVER = """
import datetime, json, os
from helios.models import Election
from helios_aws import elections

cases = json.loads(os.environ["ELECTION_CASES"])
Election.objects.all().delete()
now = Election.utcnow()
for name, fields in cases.items():
    election = Election(short_name=name, name=name)
    for field, value in fields.items():
        setattr(election, field, now + datetime.timedelta(seconds=value)
                if isinstance(value, int) else value)
    election.save()
found = [[e.short_name, e.state, e.closes_at and e.closes_at.isoformat(), e.archived]
         for e in elections.current()]
rule = {e.short_name: e.voting_has_started() and not e.voting_has_stopped()
        for e in Election.objects.all()}
print(json.dumps({"now": now.isoformat(), "django": found, "rule": rule,
                  "zone": __import__("django.db").db.connection.timezone_name}))
"""


class Project:
    def __init__(self, base, postgres):
        self.project = make_fixture_project(base, "requirements")
        # Helios hard-codes TIME_ZONE; a settings module on top gives the test its zone.
        (self.project / "zone_settings.py").write_text(
            "import os\nfrom settings import *  # noqa: F401,F403\n"
            "TIME_ZONE = os.environ['FIXTURE_TIME_ZONE']\n")
        rig.run([rig.PG_BIN / "createdb", DATABASE], env=dict(os.environ, **postgres.env))
        socket_dir = str(postgres.socket_dir).replace("/", "%2F")
        self.url = f"postgres://postgres@{socket_dir}:{postgres.port}/{DATABASE}"
        self.postgres = postgres
        migrated = self.manage("migrate", "--no-input")
        assert migrated.returncode == 0, migrated.stderr

    def manage(self, *args, zone="America/Los_Angeles", **env):
        return run_manage(self.project, *args, "--settings=zone_settings",
                          env=helios_env(DATABASE_URL=self.url, FIXTURE_TIME_ZONE=zone, **env),
                          timeout=300)

    def database(self, time_zone, name=DATABASE):
        return backup.Database(name, host=str(self.postgres.socket_dir),
                               port=str(self.postgres.port), user="postgres",
                               time_zone=time_zone)

    def psql(self, sql, name=DATABASE):
        return subprocess.run([rig.PG_BIN / "psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", name,
                               "-c", sql], env=dict(os.environ, **self.postgres.env),
                              capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def project(tmp_path_factory, postgres):
    return Project(tmp_path_factory.mktemp("elections"), postgres)


def expected():
    return {name: state for name, (_, state, _) in CASES.items() if state}


@pytest.mark.parametrize("zone", ZONES)
def test_open_and_upcoming_elections_around_every_boundary(project, zone, monkeypatch):
    created = project.manage("shell", "-c", DRIVER, zone=zone,
                             ELECTION_CASES=json.dumps({n: c[0] for n, c in CASES.items()}))
    assert created.returncode == 0, created.stderr
    result = json.loads(created.stdout.strip().splitlines()[-1])
    assert result["zone"] == zone
    now = datetime.datetime.fromisoformat(result["now"])

    # Through Django, in the session's own zone.
    assert {name: state for name, state, _, _ in result["django"]} == expected()
    # The fixture model's rule (Helios's) agrees on which are open.
    assert {n for n, is_open in result["rule"].items() if is_open} == {
        n for n, state in expected().items() if state == "open"}
    # Each election's close time, as Helios means it (naive UTC).
    for name, _, closes_at, archived in result["django"]:
        seconds = CASES[name][2]
        if seconds is None:
            assert closes_at is None, name
        else:
            assert datetime.datetime.fromisoformat(closes_at) == now + datetime.timedelta(
                seconds=seconds), name
        assert archived == (name == "archived-open")

    # Through psql, as the restore guard reads on the host, whatever psql's own zone.
    monkeypatch.setenv("PGTZ", "Pacific/Auckland")
    found = elections.read(project.database(zone).query, zone)
    assert {e.short_name: e.state for e in found} == expected()
    assert project.database(zone).open_elections() == sorted(
        n for n, state in expected().items() if state == "open")
    if zone != "UTC":
        # The trap itself: the same rows read as if stored in UTC give another answer.
        assert {e.short_name: e.state for e in elections.read(
            project.database("UTC").query, "UTC")} != expected()


@pytest.mark.parametrize("zone", ["", None, "Mars/Olympus_Mons", "UTC'; DROP TABLE x; --"])
def test_an_unknown_time_zone_refuses(project, zone):
    with pytest.raises(elections.ElectionsUnreadable) as refused:
        project.database(zone).open_elections()

    assert refused.value.message.startswith("Cannot tell which elections are open: ")
    assert "TIME_ZONE" in refused.value.message + refused.value.hint


def test_a_database_that_cannot_be_read_refuses(project):
    with pytest.raises(elections.ElectionsUnreadable) as refused:
        project.database("UTC", name="no_such_database").open_elections()

    assert "reading helios_election failed" in refused.value.message
    assert 'database "no_such_database" does not exist' in refused.value.message


def test_a_missing_table_refuses_once_helios_is_migrated(project):
    project.psql("CREATE DATABASE elections_gone")
    try:
        empty = project.database("UTC", name="elections_gone")
        assert empty.open_elections() == []  # nothing ever migrated: no election can exist
        project.psql("CREATE TABLE django_migrations (app text, name text)", "elections_gone")
        assert empty.open_elections() == []
        project.psql("INSERT INTO django_migrations VALUES ('helios', '0001_initial')",
                     "elections_gone")

        with pytest.raises(elections.ElectionsUnreadable) as refused:
            empty.open_elections()

        assert "the table helios_election is missing" in refused.value.message
    finally:
        project.psql("DROP DATABASE elections_gone")
