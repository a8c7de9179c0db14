"""Backups, drills and restores with real parts: the fixture Helios migrated into a real
PostgreSQL with a few thousand rows, the moto server over HTTP as S3 (the bucket made by
the real AWS step), and the host's side run as the timer runs it (``manage.py aws_backup
--here``), and root's side of drills and restores as ``aws_restore`` starts it
(``python -I -m helios_aws.rootside``, empty environment).

There is no systemd here: the host's backup configuration names no unit to stop, so the
restore into production stops and starts nothing (the VM test covers the units).
"""

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

import boto3
import pytest

import rig
from fixtures import HELIOS_TIME_ZONE, helios_env, make_fixture_project, run_manage
from helios_aws import backup, params, rootside
from helios_aws.aws.account import AccountStep
from helios_aws.aws.backups import BackupBucketStep
from helios_aws.aws.identity import MailRoleStep
from helios_aws.aws.session import AWS
from helios_aws.engine import Context, Output, Runner

SETTINGS = "--settings=helios_aws.settings_overrides.production"
DOMAIN = "vote.example.org"
VOTERS = 1500
DATABASE = "helios_backup"


class Site:
    """The fixture project, configured, with a database of its own holding elections,
    voters and votes, and uploaded voter files in MEDIA_ROOT."""

    def __init__(self, base, postgres, database=DATABASE):
        self.base = base
        self.database = database
        self.postgres = postgres
        self.project = make_fixture_project(base, "requirements")
        configured = run_manage(
            self.project, "aws_configure", SETTINGS, "--domain", DOMAIN, "--email",
            "elections@example.org", "--auth-systems", "password", "--no-input")
        assert configured.returncode == 0, configured.stderr
        self.deploy = self.project / "deploy"
        rig.run([rig.PG_BIN / "createdb", database], env=dict(os.environ, **postgres.env))
        socket_dir = str(postgres.socket_dir).replace("/", "%2F")
        self.env_file = base / "shared.env"
        self.env_file.write_text(
            # The media of this site are in the checkout (no host layout here).
            re.sub(r"^HELIOS_MEDIA_ROOT=.*$", f"HELIOS_MEDIA_ROOT={self.project / 'media'}",
                   (self.deploy / ".env").read_text(), flags=re.M)
            + f"DATABASE_URL=postgres://postgres@{socket_dir}:{postgres.port}/{database}\n")
        self.env_file.chmod(0o600)
        self.config = base / "backup.json"
        self.media = self.project / "media"
        (self.media / "voters").mkdir(parents=True)
        for n in range(3):
            (self.media / "voters" / f"e{n}.csv").write_text(
                "".join(f"password,v{i},v{i}@example.org,Voter {i}\n" for i in range(500)))
        migrated = self.manage("migrate", "--no-input")
        assert migrated.returncode == 0, migrated.stderr
        self.psql(
            "INSERT INTO helios_election (uuid, short_name, name, featured_p, created_at) "
            "SELECT gen_random_uuid(), 'e' || i, 'Election ' || i, false, now() "
            "FROM generate_series(1, 3) i;"
            "INSERT INTO helios_voter (election_id, uuid, voter_login_id, voter_email) "
            f"SELECT 1 + i % 3, md5(i::text), 'v' || i, 'v' || i || '@example.org' "
            f"FROM generate_series(1, {VOTERS}) i;"
            "INSERT INTO helios_castvote (voter_id, vote, vote_hash, cast_at, cast_ip) "
            "SELECT id, repeat(md5(id::text), 20), md5(id::text), now(), '192.0.2.1' "
            "FROM helios_voter;")

    def manage(self, *args):
        return run_manage(self.project, *args, SETTINGS,
                          env=helios_env(HELIOS_ENV_FILE=str(self.env_file)), timeout=300)

    def psql(self, sql):
        result = subprocess.run(
            [rig.PG_BIN / "psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", self.database, "-c",
             sql], env=dict(os.environ, **self.postgres.env), capture_output=True, text=True,
            check=True)
        return result.stdout.strip()

    def count(self, table):
        return int(self.psql(f"SELECT count(*) FROM {table}"))

    def databases(self):
        return self.psql("SELECT string_agg(datname, ' ') FROM pg_database").split()


@pytest.fixture(scope="module")
def site(tmp_path_factory, postgres):
    return Site(tmp_path_factory.mktemp("backup"), postgres)


def provision_bucket(site, **overrides):
    """The AWS steps the backups need (account, role, bucket), run as aws_provision runs
    them; returns (bucket name, the lines they printed)."""
    deployment = params.load(site.deploy, overrides or None)
    ctx = Context(deployment, site.deploy, aws=AWS(deployment.region))
    lines = []
    Runner([AccountStep(), MailRoleStep(), BackupBucketStep()], ctx,
           Output(lines.append)).apply()
    return ctx.facts["backup_bucket"], lines


@pytest.fixture
def bucket(aws_env, site):
    """The deployment's bucket in a fresh moto, and the host's backup.json naming it."""
    (site.deploy / "state.json").unlink(missing_ok=True)
    name, _ = provision_bucket(site)
    # moto refuses every object request to a bucket whose policy has a condition: it
    # treats a statement whose condition does not match as a Deny (moto 5.2,
    # moto.iam.access_control.IAMPolicyStatement). The TLS-only policy itself is
    # checked in test_backup_bucket.py; here it goes, so that objects can be written.
    boto3.client("s3").delete_bucket_policy(Bucket=name)
    site.config.write_text(backup.Config(bucket=name, prefix="helios", region="us-east-1",
                                         time_zone=HELIOS_TIME_ZONE).as_json())
    return name


def take_backup(site):
    result = site.manage("aws_backup", "--here", "--config", str(site.config))
    assert result.returncode == 0, result.stderr
    return result


def root(site, action, *extra):
    """root's side (a drill, a restore) as aws_restore starts it: isolated Python, an
    empty environment, the .env read as data (here it also names the moto server)."""
    host_env = site.base / "host.env"
    host_env.write_text(site.env_file.read_text() + "".join(
        f"{name}={os.environ[name]}\n" for name in rootside.PASSED_ON if name in os.environ))
    return subprocess.run(
        [sys.executable, "-I", "-m", "helios_aws.rootside", action, "--config",
         str(site.config), "--env-file", str(host_env), "--media", str(site.media),
         "--release", str(site.project), "--journal", str(site.base / "restore.json"),
         *extra], env={"PATH": rootside.SAFE_PATH}, cwd="/", capture_output=True, text=True,
        timeout=600)


def newest(bucket):
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="helios/daily/")
            .get("Contents", [])]
    folder = sorted(k for k in keys if k.endswith("/manifest.json"))[-1][: -len("manifest.json")]
    return folder, json.loads(s3.get_object(Bucket=bucket, Key=folder + "manifest.json")
                              ["Body"].read())


def test_backup_streams_the_database_and_media_to_s3_with_a_manifest(site, bucket):
    result = take_backup(site)

    folder, manifest = newest(bucket)
    s3 = boto3.client("s3")
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]) == [
        folder + "db.dump", folder + "manifest.json", folder + "media.tar"]
    assert manifest["row_counts"]["helios_election"] == 3
    assert manifest["row_counts"]["helios_voter"] == VOTERS
    assert manifest["row_counts"]["helios_castvote"] == VOTERS
    assert set(manifest["row_counts"]) >= {"helios_election", "helios_voter",
                                           "helios_castvote"}
    assert all(t.startswith("helios_") for t in manifest["row_counts"])
    assert manifest["migrations"] == site.psql(backup.MIGRATIONS_SQL)
    assert manifest["release"] == site.project.name
    assert manifest["kind"] == "daily" and manifest["folder"] == folder
    dump = s3.get_object(Bucket=bucket, Key=folder + "db.dump")
    data = dump["Body"].read()
    assert dump["ServerSideEncryption"] == "AES256"
    assert data.startswith(b"PGDMP")
    assert (manifest["database"]["size"], manifest["database"]["sha256"]) == (
        len(data), hashlib.sha256(data).hexdigest())
    listed = subprocess.run(["pg_restore", "--list"], input=data, capture_output=True)
    assert b"TABLE DATA public helios_castvote" in listed.stdout
    media = s3.get_object(Bucket=bucket, Key=folder + "media.tar")["Body"].read()
    assert manifest["media"]["sha256"] == hashlib.sha256(media).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(media)) as tar:
        assert {"voters/e0.csv", "voters/e1.csv", "voters/e2.csv"} <= set(tar.getnames())
    assert manifest["media"]["files"] == 3
    assert f"backup {folder}: complete" in result.stdout
    # No credential anywhere: not the keys the host used, not the .env's secrets.
    text = json.dumps(manifest) + result.stdout + result.stderr
    assert "testing" not in text.replace("helios_", "")
    secret = [line.split("=", 1)[1] for line in site.env_file.read_text().splitlines()
              if line.startswith("SECRET_KEY=")][0]
    assert secret.strip("'") not in text


def test_a_large_object_goes_up_in_parts_with_its_checksum(bucket):
    s3 = AWS("us-east-1").client("s3")
    data = os.urandom(5 * 2 ** 20) * 2 + b"tail"
    upload = backup.Upload(s3, bucket, "helios/daily/big", part_size=5 * 2 ** 20)
    for start in range(0, len(data), 65536):
        upload.write(data[start:start + 65536])
    upload.close()

    head = s3.head_object(Bucket=bucket, Key="helios/daily/big")
    assert head["ETag"].strip('"').endswith("-3")
    assert upload.sha256.hexdigest() == hashlib.sha256(data).hexdigest()
    assert s3.get_object(Bucket=bucket, Key="helios/daily/big")["Body"].read() == data


def test_a_failed_dump_leaves_no_backup_behind(site, bucket):
    site.config.write_text(backup.Config(bucket=bucket, prefix="helios", region="us-east-1")
                           .as_json())
    broken = site.env_file.read_text().replace(f"/{DATABASE}\n", "/no_such_database\n")
    env_file = site.base / "broken.env"
    env_file.write_text(broken)

    result = run_manage(site.project, "aws_backup", "--here", "--config", str(site.config),
                        SETTINGS, env=helios_env(HELIOS_ENV_FILE=str(env_file)))

    assert result.returncode == 1
    assert "no_such_database" in result.stderr
    s3 = boto3.client("s3")
    assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_drill_restores_into_a_scratch_database_and_records_the_result(site, bucket):
    take_backup(site)
    folder, _ = newest(bucket)

    drill = root(site, "drill")

    assert drill.returncode == 0, drill.stderr
    assert f"drill {folder}: passed" in drill.stdout
    assert "dropped scratch database helios_drill_" in drill.stdout
    assert not [d for d in site.databases() if d.startswith("helios_drill")]
    config = backup.Config(bucket=bucket, prefix="helios", region="us-east-1")
    record, = backup.list_drills(config)
    assert record["passed"] is True and record["backup"] == folder
    assert record["rows"] >= 2 * VOTERS + 3


def damage(bucket, folder, body):
    """Write ``body`` over the backup's dump and make its manifest name that version: a
    dump written over alone is not read (the manifest names the version it describes)."""
    s3 = boto3.client("s3")
    version = s3.put_object(Bucket=bucket, Key=folder + "db.dump", Body=body,
                            ChecksumAlgorithm="SHA256")["VersionId"]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=folder + "manifest.json")[
        "Body"].read())
    manifest["database"]["version_id"] = version
    s3.put_object(Bucket=bucket, Key=folder + "manifest.json",
                  Body=json.dumps(manifest).encode(), ChecksumAlgorithm="SHA256")


def test_a_corrupted_backup_fails_the_drill_loudly(site, bucket):
    take_backup(site)
    folder, manifest = newest(bucket)
    s3 = boto3.client("s3")
    data = bytearray(s3.get_object(Bucket=bucket, Key=folder + "db.dump")["Body"].read())
    data[len(data) // 2] ^= 0xFF
    damage(bucket, folder, bytes(data))

    drill = root(site, "drill")

    assert drill.returncode == 1
    assert f"Checksum mismatch for s3://{bucket}/{folder}db.dump" in drill.stderr
    assert manifest["database"]["sha256"] in drill.stderr
    assert not [d for d in site.databases() if d.startswith("helios_drill")]
    config = backup.Config(bucket=bucket, prefix="helios", region="us-east-1")
    record, = backup.list_drills(config)
    assert record["passed"] is False and "Checksum mismatch" in record["error"]


def restore(site, folder, *extra):
    return root(site, "restore", "--backup", folder, *extra)


def test_restore_into_production_brings_deleted_rows_back(site, bucket):
    take_backup(site)
    folder, _ = newest(bucket)
    site.psql("DELETE FROM helios_castvote WHERE id % 3 = 0")
    site.psql("CREATE TABLE helios_added_since (id int)")
    (site.media / "voters" / "e1.csv").unlink()
    assert site.count("helios_castvote") < VOTERS

    restored = restore(site, folder)

    assert restored.returncode == 0, restored.stderr
    assert site.count("helios_castvote") == VOTERS
    assert site.psql("SELECT to_regclass('helios_added_since')") == ""
    assert (site.media / "voters" / "e1.csv").exists()
    lines = restored.stdout.splitlines()
    assert lines[0].startswith(f"restore {folder} (taken ")
    assert f"restore {folder}: done" in lines
    assert lines[-1].startswith(f"The restore of {folder} is complete")


def test_a_damaged_backup_is_refused_before_production_is_touched(site, bucket):
    take_backup(site)
    folder, _ = newest(bucket)
    damage(bucket, folder, b"PGDMP but not really")
    site.psql("DELETE FROM helios_castvote WHERE id < 50")
    try:
        refused = restore(site, folder)

        assert refused.returncode == 1
        assert f"Checksum mismatch for s3://{bucket}/{folder}db.dump" in refused.stderr
        assert site.count("helios_castvote") == VOTERS - 49
        assert "did not happen" in refused.stdout
    finally:
        site.psql("INSERT INTO helios_castvote (id, voter_id, vote, vote_hash, cast_at) "
                  "SELECT id, id, repeat(md5(id::text), 20), md5(id::text), now() "
                  "FROM generate_series(1, 49) id")


def test_a_failure_to_migrate_puts_the_old_database_back(site, bucket):
    take_backup(site)
    folder, _ = newest(bucket)
    # The release is newer than the backup: the restore will have to migrate.
    site.psql("INSERT INTO django_migrations (app, name, applied) "
              "VALUES ('helios', '0003_newer', now())")
    site.psql("DELETE FROM helios_castvote WHERE id < 10")

    def migrate():
        raise backup.BackupError("migrate failed: no space left on device", "")

    class Args:
        config, media, release = str(site.config), str(site.media), str(site.project)
        env_file, journal = str(site.base / "host.env"), str(site.base / "restore.json")

    root(site, "status")  # writes host.env
    kept = [d for d in site.databases() if "_restore_" in d or "_previous_" in d]
    lines = []
    environment = dict(os.environ)
    try:
        with pytest.raises(backup.BackupError) as failed:
            rootside.restore(rootside.load_host(Args), rootside.Services([]), migrate, folder,
                             progress=lines.append)
    finally:
        os.environ.update(environment)

    assert failed.value.message.startswith(f"Restore of {folder} failed: migrate failed: no "
                                           "space left on device. Nothing changed")
    assert site.count("helios_castvote") == VOTERS - 9
    assert site.psql("SELECT count(*) FROM django_migrations WHERE name = '0003_newer'") == "1"
    assert [d for d in site.databases() if "_restore_" in d or "_previous_" in d] == kept
    site.psql("DELETE FROM django_migrations WHERE name = '0003_newer'")
    assert restore(site, folder).returncode == 0


OPEN_ONE = """
import datetime
from helios.models import Election
e = Election.objects.get(short_name="e2")
e.voting_starts_at = Election.utcnow() - datetime.timedelta(hours=1)
e.voting_ends_at = Election.utcnow() + datetime.timedelta(days=1)
e.freeze()
"""


def test_restore_is_refused_while_an_election_is_open_unless_forced(site, bucket):
    take_backup(site)
    folder, _ = newest(bucket)
    # Opened an hour ago through Helios's own way of writing times (naive UTC in a Los
    # Angeles session): read as UTC, it would not have started yet.
    opened = site.manage("shell", "-c", OPEN_ONE)
    assert opened.returncode == 0, opened.stderr
    site.psql("DELETE FROM helios_castvote WHERE id < 100")
    try:
        refused = restore(site, folder)

        assert refused.returncode == 1
        assert "election(s) open for voting now: e2" in refused.stderr
        assert site.count("helios_castvote") == VOTERS - 99

        forced = restore(site, folder, "--force")

        assert forced.returncode == 0, forced.stderr
        assert "--force: restoring although e2 is open" in forced.stdout
        assert site.count("helios_castvote") == VOTERS
    finally:
        site.psql("UPDATE helios_election SET frozen_at = NULL, voting_starts_at = NULL, "
                  "voting_ends_at = NULL")


def test_bad_backup_names_are_refused_with_the_fix(site, bucket):
    result = restore(site, "last-tuesday")

    assert result.returncode == 1
    assert "--backup 'last-tuesday' names no backup" in result.stderr
    assert "aws_backup --list" in result.stderr


def test_into_production_asks_for_the_name_without_yes(site, bucket):
    result = site.manage("aws_restore", "--into-production", "--backup",
                         "2026-12-02T031500Z", "--no-input")

    assert result.returncode == 1
    assert "--into-production with --no-input needs --yes" in result.stderr


def test_list_shows_age_size_and_whether_a_drill_verified_each_backup(site, bucket):
    take_backup(site)
    first, _ = newest(bucket)
    drilled = root(site, "drill")
    assert drilled.returncode == 0, drilled.stderr
    # Another backup, a second later, not drilled.
    import time
    time.sleep(1.1)
    take_backup(site)
    second, _ = newest(bucket)

    listed = run_manage(site.project, "aws_backup", "--list", SETTINGS)

    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == f"Backups in s3://{bucket}/ (newest first):"
    assert lines[1].startswith(f"  {second}  0.0 h old  ")
    assert lines[1].endswith("not verified by a drill")
    assert lines[2].startswith(f"  {first}  0.0 h old  ")
    assert "KiB  verified (drill " in lines[2]


def test_a_backup_written_over_is_restored_as_its_first_manifest_describes_it(site, bucket):
    take_backup(site)
    folder, manifest = newest(bucket)
    s3 = boto3.client("s3")
    first = s3.list_object_versions(Bucket=bucket, Prefix=folder + backup.MANIFEST)[
        "Versions"][0]["VersionId"]
    # What a taken-over server can do: write a dump of its own over the backup, with a
    # manifest that vouches for it (its checksum, its version), all uploaded as the host
    # uploads backups.
    forged = b"PGDMP forged"
    version = s3.put_object(Bucket=bucket, Key=folder + backup.DUMP, Body=forged,
                            ChecksumAlgorithm="SHA256")["VersionId"]
    lie = dict(manifest, database=dict(manifest["database"], version_id=version,
                                       sha256=hashlib.sha256(forged).hexdigest()))
    s3.put_object(Bucket=bucket, Key=folder + backup.MANIFEST,
                  Body=json.dumps(lie).encode(), ChecksumAlgorithm="SHA256")
    site.psql("DELETE FROM helios_castvote WHERE id % 5 = 0")

    restored = restore(site, folder, "--object-version", first)

    assert restored.returncode == 0, restored.stderr
    assert f"restore {folder}: manifest version {first}" in restored.stdout
    assert site.count("helios_castvote") == VOTERS


@pytest.mark.parametrize("flags, said", [
    (("--object-version", "abc"), "--object-version needs --backup KEY."),
    (("--backup", "helios/daily/x", "--object-version", "a b;rm"), "is not an S3 version id"),
], ids=["without --backup", "not a version id"])
def test_a_bad_object_version_is_refused_before_anything_runs(site, flags, said):
    result = run_manage(site.project, "aws_restore", SETTINGS, "--drill", *flags)

    assert result.returncode == 1
    assert said in result.stderr
