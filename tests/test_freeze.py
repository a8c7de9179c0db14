"""The election freeze, with real parts: the fixture Helios in a real PostgreSQL with an
election opened through its Django models (naive UTC, Helios's time zone), the real
sshd on loopback whose root runs root's side (``python -I -m helios_aws.freezeside``
from root's own helios-aws), and the moto server over HTTP as the backup bucket.

The gate sits in the Runner, before any host step's change: a step made here stands for
every one of them (a release, the .env, a unit, a package upgrade), as the gate knows
nothing of what the step does.
"""

import datetime
import getpass
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import boto3
import pytest
from hypothesis import given, settings, strategies as st

from fixtures import HELIOS_TIME_ZONE, helios_env, run_manage
from helios_aws import backup, freeze, records, rootside
from helios_aws.aws.session import AWS
from helios_aws.engine import CREATE, KEEP, Change, Context, Output, Runner, StepFailed
from helios_aws.errors import ConfigError, HeliosAWSError
from helios_aws.host.base import HostStep, Target, connection, q
from helios_aws.params import Deployment
from test_backup import DOMAIN, SETTINGS, Site, provision_bucket

OPEN_ELECTION = """
import datetime
from helios.models import Election
now = Election.utcnow()
Election.objects.filter(short_name="board-2026").delete()
Election(short_name="board-2026", name="Board", frozen_at=now - datetime.timedelta(hours=2),
         voting_starts_at=now - datetime.timedelta(hours=1),
         voting_ends_at=now + datetime.timedelta(hours=30)).save()
print(now.isoformat())
"""


class Touch(HostStep):
    """A host step that changes one file on the server (as root)."""

    name = "host: a change"

    def __init__(self, target, path):
        super().__init__(target)
        self.path = path

    def read(self, ctx):
        return self.facts(ctx, f"printf 'there=%s\\0' \"$(test -e {q(self.path)} && echo y)\"")

    def plan(self, ctx, current):
        return Change(KEEP) if current.get("there") else Change(CREATE, f"write {self.path}")

    def apply(self, ctx, current, change):
        self.sh(ctx, f"touch -- {q(self.path)}")


@pytest.fixture(scope="module")
def site(tmp_path_factory, postgres):
    site = Site(tmp_path_factory.mktemp("freeze"), postgres, database="helios_freeze")
    opened = site.manage("shell", "-c", OPEN_ELECTION)
    assert opened.returncode == 0, opened.stderr
    site.opened_at = datetime.datetime.fromisoformat(opened.stdout.strip().splitlines()[-1])
    return site


@pytest.fixture
def server(site, aws_env, sshd):
    """The host's layout under a prefix: a serving release, root's helios-aws, the .env
    and root's backup.json naming the bucket and Helios's time zone."""
    (site.deploy / "state.json").unlink(missing_ok=True)
    bucket, _ = provision_bucket(site)
    boto3.client("s3").delete_bucket_policy(Bucket=bucket)  # see test_backup.py
    base = Path(tempfile.mkdtemp(prefix="helios-aws-freeze-"))
    prefix = base / "host"
    app = prefix / "srv/helios"
    (app / "shared").mkdir(parents=True)
    (app / "config").mkdir()
    release = app / "releases" / "20261207000000-0123456789abcdef"
    shutil.copytree(site.project, release, ignore=shutil.ignore_patterns("deploy", "media"))
    (app / "current").symlink_to(release)
    for path, text in (("etc/systemd/system/gunicorn.service", "[Service]\n"),
                       ("etc/nginx/conf.d/helios.conf", "server {}\n")):
        (prefix / path).parent.mkdir(parents=True, exist_ok=True)
        (prefix / path).write_text(text)
    (app / "tools").mkdir()
    (app / "tools/helios-aws").symlink_to(sys.prefix)
    (app / "config/.env").write_text(site.env_file.read_text() + "".join(
        f"{name}={os.environ[name]}\n" for name in rootside.PASSED_ON if name in os.environ))
    config = prefix / "var/lib/helios-aws/backup.json"
    config.parent.mkdir(parents=True)
    config.write_text(backup.Config(bucket=bucket, prefix="helios", region="us-east-1",
                                    time_zone=HELIOS_TIME_ZONE).as_json())
    deployment = Deployment(domain=DOMAIN, email="elections@example.org",
                            ssh_user=sshd.user, host_prefix=str(prefix))
    options = {"host": sshd.host, "ssh_port": sshd.port, "ssh_key": str(sshd.client_key),
               "known_hosts": str(sshd.known_hosts),
               "trust_host_key": sshd.host_key_fingerprint,
               "ssh_agent": False}
    server = type("Server", (), {})()
    server.prefix, server.bucket, server.config, server.deployment = (
        prefix, bucket, config, deployment)
    server.options = options
    server.audit = prefix / "var/lib/helios-aws/audit.jsonl"
    server.release = release
    yield server
    shutil.rmtree(base, ignore_errors=True)


def run(site, server, *paths, out_dir=None, **options):
    """The host steps (each writing one of ``paths``) run as aws_provision runs them, with
    the gate; returns the printed lines."""
    ctx = Context(server.deployment, out_dir or site.deploy,
                  options={**server.options, **options}, aws=AWS("us-east-1"))
    ctx.before_change = freeze.step_gate(ctx, "a change of the server")
    lines = []
    ctx.out = Output(lines.append)
    try:
        target = Target(ctx)
        Runner([Touch(target, p) for p in paths], ctx, ctx.out).apply()
    finally:
        if ctx.ssh is not None:
            ctx.ssh.close()
    return lines


def test_a_change_is_refused_while_an_election_is_open_naming_it_and_its_close(site,
                                                                                 server):
    changed = server.prefix / "changed"

    with pytest.raises(StepFailed) as refused:
        run(site, server, changed)

    closes = site.opened_at + datetime.timedelta(hours=30)
    assert "Refusing a change of the server: election(s) open for voting now: board-2026 " \
        f"(closes {closes:%Y-%m-%d %H:%M} UTC)" in refused.value.message
    assert "--force --reason" in refused.value.hint
    assert not changed.exists()
    assert not server.audit.exists()


def test_a_run_that_changes_nothing_is_not_refused(site, server):
    kept = server.prefix / "kept"
    kept.touch()

    lines = run(site, server, kept)

    assert any("host: a change: unchanged" in line for line in lines)


def test_force_with_a_reason_goes_through_and_each_change_is_recorded_first(site, server):
    first, second = server.prefix / "first", server.prefix / "second"

    lines = run(site, server, first, second, force=True,
                reason="security fix to the booth's TLS")

    assert first.exists() and second.exists()
    assert any("--force: a change of the server although board-2026" in line
               for line in lines)
    # On the host: root's, not the service user's to read or rewrite.
    info = server.audit.stat()
    assert (info.st_uid, info.st_mode & 0o777) == (0, 0o600)
    records = [json.loads(line) for line in server.audit.read_text().splitlines()]
    assert [r["changes"] for r in records] == [[f"host: a change: create (write {first})"],
                                               [f"host: a change: create (write {second})"]]
    for record in records:
        assert record["reason"] == "security fix to the booth's TLS"
        assert record["action"] == "a change of the server"
        assert record["operator"]["user"] == getpass.getuser()
        assert [e["short_name"] for e in record["elections"]] == ["board-2026"]
        assert datetime.datetime.fromisoformat(record["at"]) > site.opened_at.replace(
            tzinfo=datetime.timezone.utc)
    # Each record names the one before it: a line removed from the log shows.
    assert records[0]["sha256_of_previous"] is None
    assert records[1]["sha256_of_previous"] == hashlib.sha256(
        server.audit.read_text().splitlines()[0].encode()).hexdigest()
    # In the bucket, with its SHA-256 checksum.
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=server.bucket,
                                                 Prefix="helios/audit/")["Contents"]]
    assert len(keys) == 2
    bodies = sorted(json.loads(s3.get_object(Bucket=server.bucket, Key=k)["Body"].read())
                    ["changes"][0] for k in keys)
    assert bodies == sorted(r["changes"][0] for r in records)
    attributes = s3.get_object_attributes(Bucket=server.bucket, Key=keys[0],
                                          ObjectAttributes=["Checksum"])
    assert attributes["Checksum"]["ChecksumSHA256"]


@pytest.mark.parametrize("damage, said", [
    ("zone", "Helios's time zone is unknown"),
    ("database", 'database "helios_gone" does not exist'),
])
def test_elections_that_cannot_be_read_refuse_naming_what(site, server, damage, said):
    if damage == "zone":
        server.config.write_text(server.config.read_text().replace(HELIOS_TIME_ZONE, ""))
    else:
        env = server.prefix / "srv/helios/config/.env"
        env.write_text(env.read_text().replace("/helios_freeze", "/helios_gone"))
    changed = server.prefix / "changed"

    with pytest.raises(StepFailed) as refused:
        run(site, server, changed)

    assert "Cannot tell whether an election is open on the server, so nothing was changed" \
        in refused.value.message
    assert said in refused.value.message
    assert not changed.exists()


def test_a_server_that_never_served_helios_is_provisioned_without_asking(site, server):
    (server.prefix / "srv/helios/current").unlink()
    shutil.rmtree(server.prefix / "srv/helios/tools")
    changed = server.prefix / "changed"

    run(site, server, changed)

    assert changed.exists()


def test_a_restore_into_production_is_refused_naming_the_close(site, server):
    ctx = Context(server.deployment, site.deploy, options=server.options)
    try:
        gate = freeze.Gate(server.deployment, {}, "a restore into production",
                           lambda: connection(ctx))
        with pytest.raises(freeze.Frozen) as refused:
            gate(["restore daily/x into production"])
    finally:
        ctx.ssh.close()
    assert "Refusing a restore into production: election(s) open for voting now: " \
        "board-2026 (closes" in refused.value.message


def test_force_needs_a_reason(site):
    result = run_manage(site.project, "aws_provision", "--output", str(site.deploy), "--force",
                        SETTINGS, env=helios_env(HELIOS_ENV_FILE=str(site.env_file)))

    assert result.returncode != 0
    assert "--force needs --reason" in result.stderr
    for options, said in (({"force": True, "reason": "  "}, "--force needs --reason"),
                          ({"reason": "why"}, "--reason means something only with --force")):
        with pytest.raises(ConfigError, match=said):
            freeze.check_options(options)


def moved(site, tmp_path, domain):
    """A copy of the deployment's files whose .env gives the site another address."""
    out_dir = tmp_path / "deploy"
    shutil.copytree(site.deploy, out_dir)
    env = out_dir / ".env"
    env.write_text(env.read_text().replace(f"https://{DOMAIN}", f"https://{domain}"))
    return out_dir


@pytest.mark.parametrize("force", [False, True])
def test_a_new_address_is_refused_while_the_database_holds_elections(site, server, tmp_path,
                                                                   force):
    changed = server.prefix / "changed"
    options = {"force": True, "reason": "new domain"} if force else {}

    with pytest.raises(StepFailed) as refused:
        run(site, server, changed, out_dir=moved(site, tmp_path, "new.example.org"), **options)

    assert f"Refusing to change the site's address (SECURE_URL_HOST https://{DOMAIN} -> " \
        "https://new.example.org; URL_HOST" in refused.value.message
    assert "each election's cast URL is part of its fingerprint" in refused.value.message
    assert "the old --domain" in refused.value.hint
    assert not changed.exists()


def test_a_new_address_goes_through_while_the_database_holds_no_election(site, server,
                                                                        tmp_path):
    site.psql("CREATE DATABASE helios_freeze_empty")
    env = server.prefix / "srv/helios/config/.env"
    env.write_text(env.read_text().replace("/helios_freeze", "/helios_freeze_empty"))
    changed = server.prefix / "changed"
    try:
        run(site, server, changed, out_dir=moved(site, tmp_path, "new.example.org"))
    finally:
        site.psql("DROP DATABASE helios_freeze_empty")

    assert changed.exists()


NAMES = st.text(min_size=1, max_size=20)


@settings(max_examples=40, deadline=None)
@given(action=NAMES, reason=NAMES, user=NAMES, arn=st.none() | NAMES,
       open_now=st.lists(st.tuples(NAMES, st.none() | NAMES), max_size=3),
       changes=st.lists(NAMES, max_size=3))
def test_root_accepts_the_record_the_operator_writes_and_refuses_another(
        action, reason, user, arn, open_now, changes):
    record = freeze.audit_record(action, reason, {"user": user, "aws": arn}, open_now,
                                 changes)
    sent = json.loads(json.dumps(record))
    assert records.check(sent, records.AUDIT, "the audit record", "fix", HeliosAWSError) == sent

    sent["operator"] = user
    with pytest.raises(HeliosAWSError, match="^the audit record: operator must be an object"):
        records.check(sent, records.AUDIT, "the audit record", "fix", HeliosAWSError)


VOTES = """
import datetime
from helios.models import CastVote, Election, Voter
now = Election.utcnow()
hour = datetime.timedelta(hours=1)
for name, ends, states in [("past-pending", -2, ["new", "new", "verified", "invalid"]),
                           ("past-verified", -3, ["verified", "invalid"]),
                           ("board-2026", None, ["new"])]:
    election = Election.objects.get_or_create(short_name=name, defaults={"name": name})[0]
    if ends is not None:
        election.frozen_at, election.voting_ends_at = now - 10 * hour, now + ends * hour
        election.save()
    for number, state in enumerate(states):
        voter = Voter.objects.create(election=election, uuid=f"{name}-{number}")
        CastVote.objects.create(voter=voter, vote="{}", vote_hash="h",
                                verified_at=now if state == "verified" else None,
                                invalidated_at=now if state == "invalid" else None)
print(now.isoformat())
"""


def pending_check(server, sshd):
    from helios_aws.probes import REGISTRY
    from helios_aws.probes import base as probes_base, host as probes_host

    connect = probes_host.connector(server.deployment, {}, host=sshd.host, port=sshd.port,
                                    key_file=str(sshd.client_key),
                                    known_hosts=[str(sshd.known_hosts)])
    ctx = probes_base.Context(server.deployment,
                              ssh=lambda: probes_host.Pool(connect).open_first())
    try:
        return probes_base.run_one(REGISTRY["seal.W001"], ctx)
    finally:
        ctx.close()


def test_aws_check_warns_while_an_ended_election_has_votes_waiting_to_be_verified(
        site, server, sshd):
    made = site.manage("shell", "-c", VOTES)
    assert made.returncode == 0, made.stderr
    now = datetime.datetime.fromisoformat(made.stdout.strip().splitlines()[-1])
    try:
        warned = pending_check(server, sshd)

        ended = now - datetime.timedelta(hours=2)
        assert (warned.id, warned.status) == ("seal.W001", "warn")
        assert warned.message == (
            "Cast votes wait to be verified in election(s) whose voting has ended: "
            f"past-pending (2 vote(s), voting ended {ended:%Y-%m-%d %H:%M} UTC). "
            "Do not tally yet.")
        assert "helios-celery" in warned.hint

        site.psql("UPDATE helios_castvote SET verified_at = now() WHERE verified_at IS NULL "
                  "AND invalidated_at IS NULL")
        assert pending_check(server, sshd).status == "pass"
    finally:
        site.psql("DELETE FROM helios_castvote c USING helios_voter v WHERE c.voter_id = v.id "
                  "AND v.uuid LIKE '%-_'; DELETE FROM helios_voter WHERE uuid LIKE '%-_';"
                  "DELETE FROM helios_election WHERE short_name LIKE 'past-%'")


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def drift_check(server, sshd):
    from helios_aws.probes import REGISTRY
    from helios_aws.probes import base as probes_base, host as probes_host

    connect = probes_host.connector(server.deployment, {}, host=sshd.host, port=sshd.port,
                                    key_file=str(sshd.client_key),
                                    known_hosts=[str(sshd.known_hosts)])
    ctx = probes_base.Context(server.deployment,
                              ssh=lambda: probes_host.Pool(connect).open_first())
    try:
        return probes_base.run_one(REGISTRY["seal.E001"], ctx)
    finally:
        ctx.close()


def test_a_frozen_election_is_sealed_published_and_drift_is_named(site, server, sshd):
    ctx = Context(server.deployment, site.deploy, options=server.options)
    try:
        # As helios-seal.timer runs it, every minute.
        wrote = connection(ctx).run(freeze.seal_command(server.deployment, "write"),
                                    sudo=True, check=False)
        again = connection(ctx).run(freeze.seal_command(server.deployment, "write"),
                                    sudo=True, check=False)
    finally:
        ctx.ssh.close()

    assert wrote.status == 0, wrote.stderr
    assert "sealed board-2026: release 20261207000000-0123456789abcdef" in wrote.stdout
    assert again.status == 0 and again.stdout.strip() == ""  # written once
    kept = server.prefix / "var/lib/helios-aws/seals/board-2026.json"
    seal = json.loads(kept.read_text())
    assert seal["browser_files"]["/booth/booth.js"] == sha(server.release /
                                                          "heliosbooth/booth.js")
    assert seal["browser_files"]["/verifier/verify.html"] == sha(
        server.release / "heliosverifier/verify.html")
    site_file = server.prefix / "etc/nginx/conf.d/helios.conf"
    assert seal["nginx_site"] == {str(site_file): sha(site_file)}
    env = server.prefix / "srv/helios/config/.env"
    assert seal["env_sha256"] == sha(env)
    secret = next(line.partition("=")[2] for line in env.read_text().splitlines()
                  if line.startswith("SECRET_KEY="))
    assert secret not in kept.read_text()
    assert seal["os_packages"]["openssh-server"]
    published = server.prefix / "var/www/helios-seal/board-2026.json"
    assert published.read_text() == kept.read_text()
    assert published.stat().st_mode & 0o777 == 0o644
    s3 = boto3.client("s3")
    stored = s3.get_object(Bucket=server.bucket, Key="helios/audit/seals/board-2026.json")
    assert stored["Body"].read().decode() == kept.read_text()

    assert drift_check(server, sshd).status == "pass"
    booth = server.release / "heliosbooth/booth.js"
    booth.write_text(booth.read_text() + "\n// changed while voting\n")
    drifted = drift_check(server, sshd)
    assert drifted.status == "fail"
    assert drifted.message.startswith("The server differs from the seal of board-2026: "
                                      "browser file /booth/booth.js: sealed ")
    assert "release tree" in drifted.message


def test_stop_is_refused_while_an_election_is_open_and_forced_with_a_record(site, server):
    from helios_aws import provision

    ec2 = boto3.client("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    iid = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "helios-aws:deployment",
                                               "Value": server.deployment.name}]}],
    )["Instances"][0]["InstanceId"]
    lines = []

    def stop(**extra):
        provision.run(server.deployment, site.deploy, {**server.options, "stop": True,
                                                        **extra},
                      Output(lines.append), lambda prompt, expected: False)

    def state():
        return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0][
            "State"]["Name"]

    with pytest.raises(freeze.Frozen) as refused:
        stop()
    assert refused.value.message.startswith("Refusing --stop: election(s) open for voting "
                                            "now: board-2026 (closes ")
    assert state() == "running"

    stop(force=True, reason="the host must move")

    assert state() == "stopped"
    record = json.loads(server.audit.read_text().splitlines()[-1])
    assert (record["action"], record["changes"], record["reason"]) == (
        "--stop", [f"stop {iid}"], "the host must move")
    assert record["operator"]["aws"].startswith("arn:aws:")


def test_a_server_that_cannot_be_reached_is_not_stopped_unless_forced(site, server, sshd):
    from helios_aws import provision

    ec2 = boto3.client("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    iid = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "helios-aws:deployment",
                                               "Value": server.deployment.name}]}],
    )["Instances"][0]["InstanceId"]
    unreachable = {**server.options, "ssh_port": rig_free_port(), "ssh_wait": 0, "stop": True}

    with pytest.raises(freeze.Frozen) as refused:
        provision.run(server.deployment, site.deploy, unreachable, Output(lambda line: None),
                      lambda prompt, expected: False)

    assert refused.value.message.startswith(
        "Cannot tell whether an election is open: the server cannot be reached (")
    assert "--force --reason" in refused.value.hint
    assert ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0][
        "State"]["Name"] == "running"


def rig_free_port():
    import socket

    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


def test_a_server_whose_root_tool_predates_the_freeze_needs_force_once(site, server):
    tool = server.prefix / "srv/helios/tools/helios-aws"
    tool.unlink()
    (tool / "bin").mkdir(parents=True)
    (tool / "bin/python").write_text('#!/bin/sh\nexec /usr/bin/python3 "$@"\n')
    (tool / "bin/python").chmod(0o755)
    changed = server.prefix / "changed"

    with pytest.raises(StepFailed) as refused:
        run(site, server, changed)
    assert "helios_aws.freezeside" in refused.value.message
    assert not changed.exists()

    lines = run(site, server, changed, force=True, reason="first run of the new helios-aws")

    assert changed.exists()
    assert any("audit record written to s3://" in line and
               "(root's side on the server could not record it)" in line for line in lines)
    s3 = boto3.client("s3")
    key = s3.list_objects_v2(Bucket=server.bucket, Prefix="helios/audit/")["Contents"][0]["Key"]
    record = json.loads(s3.get_object(Bucket=server.bucket, Key=key)["Body"].read())
    assert record["reason"] == "first run of the new helios-aws"
    assert record["changes"][1].startswith("elections unreadable: Cannot tell whether an "
                                           "election is open on the server")
    assert record["changes"][2].startswith("the site's address (URL_HOST) could not be "
                                           "checked")


def test_a_host_without_backups_is_judged_in_helios_s_zone_and_its_record_stays_there(
        tmp_path):
    """No bucket, so no backup.json: root's side takes Helios's time zone and the service
    user that the operator's side passes, and an override's record is the host's log."""
    import argparse

    from helios_aws import freezeside

    missing = tmp_path / "backup.json"
    args = argparse.Namespace(config=str(missing), time_zone=HELIOS_TIME_ZONE,
                              service_user="helios")
    config = freezeside._config(args)
    assert (config.bucket, config.time_zone, config.service_user) == \
        ("", HELIOS_TIME_ZONE, "helios")
    log = tmp_path / "audit.jsonl"
    assert freezeside.write_audit(config, {"reason": "urgent fix"}, log) is None
    assert json.loads(log.read_text()) == {"reason": "urgent fix"}
    # Without the zone it cannot judge an election: it refuses, naming the file.
    with pytest.raises(backup.BackupError, match="backup.json is missing"):
        freezeside._config(argparse.Namespace(config=str(missing), time_zone="",
                                              service_user="helios"))
