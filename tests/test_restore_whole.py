"""A restore into production is whole or not at all: root's side (``python -I -m
helios_aws.rootside``) against the real PostgreSQL and the moto server, started with an
empty environment as ``aws_restore`` starts it. The kill table kills the restore's
worker with SIGKILL at each phase, lets the supervisor's recovery run as it does on the
server, and checks the database (row counts, indexes), the media and the services.

There is no systemd here (the VM test covers the units): the kill table observes the
services through a stand-in that records whether they were last stopped or started.
"""

import json
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import time

import boto3
import pytest
from hypothesis import given, settings, strategies as st

from helios_aws import rootside
from test_backup import VOTERS, Site, newest, provision_bucket, take_backup
from fixtures import HELIOS_TIME_ZONE

INDEXES_SQL = ("SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' "
               "AND tablename = 'helios_castvote'")


@pytest.fixture(scope="module")
def site(tmp_path_factory, postgres):
    site = Site(tmp_path_factory.mktemp("whole"), postgres, database="helios_whole")
    site.host_env = site.base / "host.env"
    site.journal = site.base / "state" / "restore.json"
    return site


@pytest.fixture
def bucket(aws_env, site):
    (site.deploy / "state.json").unlink(missing_ok=True)
    site.journal.unlink(missing_ok=True)
    name, _ = provision_bucket(site)
    boto3.client("s3").delete_bucket_policy(Bucket=name)  # see test_backup.py
    site.config.write_text(rootside.backup.Config(bucket=name, prefix="helios", region="us-east-1",
                                                  time_zone=HELIOS_TIME_ZONE).as_json())
    site.host_env.write_text(
        site.env_file.read_text() + f"AWS_ENDPOINT_URL={aws_env}\nAWS_ACCESS_KEY_ID=testing\n"
        "AWS_SECRET_ACCESS_KEY=testing\nAWS_DEFAULT_REGION=us-east-1\n")
    return name


def arguments(site):
    return ["--config", str(site.config), "--env-file", str(site.host_env), "--media",
            str(site.media), "--release", str(site.project), "--journal", str(site.journal)]


def run_root(site, action, *extra):
    """root's side as aws_restore starts it: isolated Python, empty environment."""
    return subprocess.run([sys.executable, "-I", "-m", "helios_aws.rootside", action,
                           *arguments(site), *extra], env={"PATH": rootside.SAFE_PATH},
                          cwd="/", capture_output=True, text=True, timeout=600)


def state(site):
    """What a user of the site would see: votes, indexes, a media file, databases."""
    return {"votes": site.count("helios_castvote"), "indexes": int(site.psql(INDEXES_SQL)),
            "e1": (site.media / "voters" / "e1.csv").exists(),
            "leftovers": sorted(d for d in site.databases() if "_restore_" in d)}


def damage(site):
    site.psql("DELETE FROM helios_castvote WHERE id % 2 = 0")
    (site.media / "voters" / "e1.csv").unlink(missing_ok=True)
    (site.media / "voters" / "added-since.csv").write_text("x\n")


def test_restore_goes_into_new_ones_and_keeps_the_previous(site, bucket):
    take_backup(site)
    folder, _ = newest(bucket)
    damage(site)
    indexes = int(site.psql(INDEXES_SQL))

    restored = run_root(site, "restore", "--backup", folder)

    assert restored.returncode == 0, restored.stderr
    assert state(site) == {"votes": VOTERS, "indexes": indexes, "e1": True, "leftovers": []}
    assert not (site.media / "voters" / "added-since.csv").exists()  # replaced, not merged
    record = rootside.read_journal(site.journal)
    assert record["phase"] == rootside.DONE
    assert record["previous_database"] in site.databases()
    previous = site.media.parent / os.path.basename(record["previous_media"])
    assert (previous / "voters" / "added-since.csv").exists()
    assert restored.stdout.splitlines()[-1] == rootside.outcome(record)
    assert "is kept as" in restored.stdout

    # The next successful restore removes what this one kept, and keeps its own.
    again = run_root(site, "restore", "--backup", folder)
    assert again.returncode == 0, again.stderr
    assert record["previous_database"] not in site.databases()
    assert not previous.exists()
    assert rootside.read_journal(site.journal)["previous_database"] in site.databases()


class Recorded(rootside.Services):
    """The services, as a file saying whether they run."""

    def __init__(self, path):
        super().__init__([])
        self.path = path

    def stop(self):
        self.path.write_text("stopped")

    def start(self):
        self.path.write_text("running")


# (where the worker is killed, what serves afterwards)
KILL_TABLE = [
    ("preparing", "old"),      # the new database created, pg_restore running
    ("restored", "old"),       # the new database complete, media not yet extracted
    ("extracted", "old"),      # both complete and checked, services still running
    ("switching", "old"),      # services stopped, nothing switched yet
    ("media renamed", "old"),  # the old media moved aside, the new not yet in place
    ("databases renamed", "old"),  # switched, not yet migrated
    ("migrating", "old"),      # migrate running on the new database
    ("done", "new"),           # the journal says done, services not yet started
]


def host_of(site):
    """The Host root's side builds from its arguments (this process's environment kept:
    loading it empties the environment, as root's side does)."""
    class Args:
        config, env_file, media = str(site.config), str(site.host_env), str(site.media)
        release, journal = str(site.project), str(site.journal)

    environment = dict(os.environ)
    try:
        return rootside.load_host(Args)
    finally:
        os.environ.clear()
        os.environ.update(environment)


def _killed_worker(site, point, folder):
    """The restore, as the worker runs it, SIGKILLed at ``point``."""
    def die(*_):
        os.kill(os.getpid(), signal.SIGKILL)

    def at(name, function):
        def wrapped(*args, **kwargs):
            result = function(*args, **kwargs)
            if point == name:
                die()
            return result
        return wrapped

    original_restore = rootside.backup._restore
    if point == "preparing":
        def slow(db, download, replace=False):
            import threading
            threading.Timer(0.1, die).start()
            return original_restore(db, download, replace)
        rootside.backup._restore = slow
    rootside.backup._restore = at("restored", rootside.backup._restore)
    rootside._extract_media = at("extracted", rootside._extract_media)
    renames = []

    def rename(host, source, target, _original=rootside._rename):
        _original(host, source, target)
        renames.append(source)
        if point == "media renamed" and len(renames) == 1:
            die()
    rootside._rename = rename
    rootside._rename_databases = at("databases renamed", rootside._rename_databases)

    def phase(name):
        if name == point:
            die()

    host = host_of(site)

    def migrate():
        if point == "migrating":
            die()

    rootside.restore(host, Recorded(site.base / "services"), migrate, folder, phase=phase)
    os._exit(0)


@pytest.mark.parametrize("point,serving", KILL_TABLE, ids=[p for p, _ in KILL_TABLE])
def test_kill_table(site, bucket, point, serving):
    take_backup(site)
    folder, _ = newest(bucket)
    damage(site)
    # The backup's migrations differ from the database's: the restore must migrate.
    site.psql("INSERT INTO django_migrations (app, name, applied) "
              "VALUES ('helios', '9999_since', now())")
    old = state(site)
    (site.base / "services").write_text("running")

    worker = multiprocessing.get_context("fork").Process(
        target=_killed_worker, args=(site, point, folder))
    worker.start()
    worker.join(timeout=300)
    assert worker.exitcode == -signal.SIGKILL

    # What the supervisor (or the next command) does, with the services observed.
    services = Recorded(site.base / "services")
    rootside.recover(host_of(site), services)
    assert services.path.read_text() == "running"
    asked = run_root(site, "status")
    assert asked.returncode == 0, asked.stderr
    record = rootside.read_journal(site.journal)
    if serving == "old":
        assert state(site) == old
        assert record["phase"] == rootside.UNDONE
        assert "did not happen" in asked.stdout
    else:
        assert state(site) == {**old, "votes": VOTERS, "e1": True}
        assert "is complete" in asked.stdout
    assert not os.path.exists(record["new_media"])
    site.psql("DELETE FROM django_migrations WHERE name = '9999_since'")
    restored = run_root(site, "restore", "--backup", folder)  # back to a known state
    assert restored.returncode == 0, restored.stderr


def test_root_side_refuses_to_leave_half_a_restore_when_checks_fail(site, bucket):
    take_backup(site)
    folder, manifest = newest(bucket)
    damage(site)
    old = state(site)
    s3 = boto3.client("s3")
    manifest["row_counts"]["helios_castvote"] += 1
    import json
    s3.put_object(Bucket=bucket, Key=folder + "manifest.json",
                  Body=json.dumps(manifest).encode())

    refused = run_root(site, "restore", "--backup", folder)

    assert refused.returncode == 1
    assert "row counts differ" in refused.stderr
    assert "did not happen" in refused.stdout
    assert state(site) == old


def test_ctrl_c_on_the_server_undoes_the_restore(site, bucket):
    """SIGINT to the restore's process group (Ctrl-C in a terminal on the server): the
    worker stops, the supervisor undoes what it began and says so."""
    take_backup(site)
    folder, _ = newest(bucket)
    damage(site)
    old = state(site)
    site.journal.unlink(missing_ok=True)
    running = subprocess.Popen(
        [sys.executable, "-I", "-m", "helios_aws.rootside", "restore", *arguments(site),
         "--backup", folder], env={"PATH": rootside.SAFE_PATH}, cwd="/",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (site.journal.exists()
               and rootside.read_journal(site.journal)["phase"] == rootside.PREPARING):
        assert running.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(running.pid, signal.SIGINT)
    out, err = running.communicate(timeout=300)

    assert running.returncode == 1, (out, err)
    assert f"The restore of {folder} did not happen" in out, (out, err)
    assert state(site) == old, (out, err)
    assert rootside.read_journal(site.journal)["phase"] == rootside.UNDONE
    restored = run_root(site, "restore", "--backup", folder)  # back to a known state
    assert restored.returncode == 0, restored.stderr


RECORDS = st.fixed_dictionaries(
    {key: st.text(min_size=1) for key in rootside.JOURNAL_KEYS if key != "phase"}
    | {"phase": st.sampled_from(rootside.PHASES)},
    optional={"pid": st.integers(), "units": st.lists(st.text())})


@settings(max_examples=60, deadline=None)
@given(record=RECORDS)
def test_the_journal_reads_back_what_it_writes(tmp_path_factory, record):
    path = tmp_path_factory.mktemp("journal") / "restore.json"
    rootside.write_journal(path, record)
    assert rootside.read_journal(path) == record
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@settings(max_examples=60, deadline=None)
@given(record=RECORDS, broken=st.sampled_from(rootside.JOURNAL_KEYS),
       value=st.one_of(st.none(), st.just(""), st.integers(), st.just("other phase")))
def test_the_journal_refuses_a_record_it_did_not_write(tmp_path_factory, record, broken,
                                                       value):
    if broken != "phase" and value == "other phase":
        value = None
    path = tmp_path_factory.mktemp("journal") / "restore.json"
    path.write_text(json.dumps({**record, broken: value}))
    with pytest.raises(rootside.RestoreError, match="restore journal .* is damaged"):
        rootside.read_journal(path)
