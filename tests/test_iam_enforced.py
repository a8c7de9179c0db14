"""The instance role's permissions proven by use: the real code, run as on the server,
with an IAM user carrying exactly the policy documents aws_provision wrote on the role,
against the moto server with IAM enforced (see iam_enforcement.py for what moto cannot
judge and how it is adapted).

Helios's mail goes out as Helios sends it (``django.core.mail.send_mail`` in its own
settings with the overlay and ``EMAIL_USE_AWS=1``), through django-ses at the version
Helios's uv.lock pins and at the newest; the backup runner takes a backup, drills it,
restores it (the drill and the restore list the backups to find the newest; ``aws_backup
--list`` runs on the operator's machine with the operator's policy). Then every action is taken out in turn, and some of
those paths must fail: an action nothing needs is not in the policy.
"""

import json
import os
import secrets
import subprocess
import sys

import boto3
import pytest

from fixtures import HELIOS_TIME_ZONE, run_manage
from helios_aws.aws import backups
from iam_enforcement import MOTO_SPELLINGS, actions, enforced, refused, without
from test_backup import SETTINGS, Site, newest, provision_bucket, root

# The django-ses Helios's uv.lock pins; the newest is the one installed here.
PINNED_DJANGO_SES = "4.1.0"
SENDER = "elections@example.org"
ROLE = "helios-helios-us-east-1"


@pytest.fixture(scope="module")
def site(tmp_path_factory, postgres):
    return Site(tmp_path_factory.mktemp("enforced"), postgres, database="helios_enforced")


@pytest.fixture
def role_documents(aws_env, site):
    """The policy documents aws_provision wrote on the instance role, read back from IAM;
    the bucket's policy goes as in test_backup.py (moto cannot evaluate its condition)."""
    (site.deploy / "state.json").unlink(missing_ok=True)
    bucket, _ = provision_bucket(site)
    s3 = boto3.client("s3")
    s3.delete_bucket_policy(Bucket=bucket)
    from helios_aws import backup
    site.config.write_text(backup.Config(bucket=bucket, prefix="helios", region="us-east-1",
                                         time_zone=HELIOS_TIME_ZONE).as_json())
    ses = boto3.client("ses")
    ses.verify_domain_identity(Domain="example.org")
    ses.verify_email_identity(EmailAddress=SENDER)
    iam = boto3.client("iam")
    return [iam.get_role_policy(RoleName=ROLE, PolicyName=name)["PolicyDocument"]
            for name in iam.list_role_policies(RoleName=ROLE)["PolicyNames"]]


@pytest.fixture(scope="module")
def pinned_django_ses(tmp_path_factory):
    """A directory holding django-ses at Helios's pinned version, to put first on the
    path of the process that sends the mail."""
    target = tmp_path_factory.mktemp("django-ses-pinned")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), f"django-ses=={PINNED_DJANGO_SES}"], check=True,
                   capture_output=True, timeout=300)
    return target


SEND = ("import importlib.metadata as m, django_ses;"
        "from django.core.mail import send_mail;"
        "from django.conf import settings;"
        "print('django-ses', m.version('django-ses'), settings.EMAIL_BACKEND);"
        "send_mail('Your ballot', 'Vote now.', None, ['voter@example.net'])")


def send_as_helios(site, pythonpath=None):
    """Helios sends mail with send_mail in its settings; the deployment's .env has
    EMAIL_USE_AWS=1, so it goes through helios-aws's backend on django-ses with the
    overlay's settings. The backend reads the account's sending rate (GetSendQuota) into a
    fresh pace file; a rate it could not read (it then sends at SES's lowest) counts as a
    failure of the path."""
    env = {"PYTHONPATH": str(pythonpath)} if pythonpath else {}
    from fixtures import helios_env
    pace = site.env_file.parent / f"mail-pace-{secrets.token_hex(4)}"
    result = run_manage(site.project, "shell", SETTINGS, "-c", SEND, timeout=120,
                        env=helios_env(HELIOS_ENV_FILE=str(site.env_file),
                                       HELIOS_AWS_MAIL_PACE_FILE=str(pace), **env))
    pace.unlink(missing_ok=True)
    if result.returncode == 0 and "sending rate could not be read" in result.stderr:
        result.returncode = 1
    return result


def backup_runner(site):
    """The backup runner's paths, as the server runs them: the backup as the timer does
    (manage.py in Helios's settings), the drill and the restore as root's side
    (helios_aws.rootside, started by aws_restore); returns [(path, CompletedProcess)] up
    to the first that failed."""
    done = []
    for path in ("backup", "drill", "restore"):
        if path == "backup":
            result = site.manage("aws_backup", "--here", "--config", str(site.config))
        elif path == "drill":
            result = root(site, "drill")
        else:
            folder, _ = newest_with_operator_keys(site)
            result = root(site, "restore", "--backup", folder)
        done.append((path, result))
        if result.returncode != 0:
            break
    return done


def newest_with_operator_keys(site):
    with pytest.MonkeyPatch.context() as keys:
        keys.setenv("AWS_ACCESS_KEY_ID", "testing")
        keys.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        import moto.settings
        previous = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
        try:
            bucket = boto3.client("s3").list_buckets()["Buckets"][0]["Name"]
            return newest(bucket)
        finally:
            moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = previous


def every_path(site, pythonpath=None):
    """[(path, CompletedProcess)]: the mail, then the backup runner."""
    return [("mail", send_as_helios(site, pythonpath))] + backup_runner(site)


def test_the_instance_role_sends_helios_mail_with_the_pinned_and_newest_django_ses(
        site, role_documents, pinned_django_ses, monkeypatch):
    with enforced(role_documents, monkeypatch) as denials:
        newest_ses = send_as_helios(site)
        pinned = send_as_helios(site, pinned_django_ses)

    assert newest_ses.returncode == 0, newest_ses.stderr
    assert pinned.returncode == 0, pinned.stderr
    assert f"django-ses {PINNED_DJANGO_SES}" in pinned.stdout
    assert "django-ses 4." in newest_ses.stdout
    assert newest_ses.stdout != pinned.stdout
    assert "helios_aws.mailer.PacedSESBackend" in newest_ses.stdout
    assert denials.seen == []


def test_the_instance_role_runs_backup_drill_list_and_restore(site, role_documents,
                                                              monkeypatch):
    with enforced(role_documents, monkeypatch) as denials:
        done = backup_runner(site)

    assert [(path, r.returncode) for path, r in done] == [
        ("backup", 0), ("drill", 0), ("restore", 0)], done[-1][1].stderr
    assert denials.seen == []


def test_every_action_of_the_instance_role_is_needed(site, role_documents, monkeypatch):
    """Each action taken out in turn: some real path then fails, refused by IAM."""
    unneeded = []
    allowing = [dict(d, Statement=[st for st in d["Statement"] if st["Effect"] == "Allow"])
                for d in role_documents]
    for action in actions(allowing):
        with enforced(without(role_documents, action), monkeypatch) as denials:
            done = every_path(site)
        failed = [path for path, result in done if result.returncode != 0]
        names = [action] + MOTO_SPELLINGS.get(action, [])
        if not failed or not any(d.split()[0] in names for d in denials.seen):
            unneeded.append(action)
    assert sorted(unneeded) == sorted(NOT_SHOWN_BY_MOTO)


# Actions a real path needs that moto 5.2 does not make fail when they are missing.
NOT_SHOWN_BY_MOTO = {
    # Called only when an upload fails half-way (backup.Upload.abort), to leave no
    # billed parts behind; no path here fails after a part is up.
    "s3:AbortMultipartUpload": "backup.Upload.abort",
    # The restore downloads the exact versions it verified (GetObject with VersionId,
    # which AWS authorizes as s3:GetObjectVersion); moto authorizes it as GetObject.
    "s3:GetObjectVersion": "backup.restore -> Download(version_id=...)",
}


def test_the_instance_role_records_an_override_of_the_election_freeze(site, role_documents,
                                                                      monkeypatch, tmp_path):
    """root's side of ``--force --reason`` (helios_aws.freezeside audit) puts its record
    in the bucket with the instance role, under the deployment's prefix."""
    import json
    from helios_aws import rootside

    record = {"at": "2026-12-07T23:00:00+00:00", "action": "a change of the server",
              "reason": "urgent fix", "operator": {"user": "ops", "aws": None},
              "elections": [{"short_name": "board", "closes_at": None}],
              "changes": ["host: release: create"]}
    with enforced(role_documents, monkeypatch) as denials:
        host_env = tmp_path / "host.env"
        host_env.write_text(site.env_file.read_text() + "".join(
            f"{name}={os.environ[name]}\n" for name in rootside.PASSED_ON
            if name in os.environ))
        result = subprocess.run(
            [sys.executable, "-I", "-m", "helios_aws.freezeside", "audit", "--config",
             str(site.config), "--env-file", str(host_env), "--log",
             str(tmp_path / "audit.jsonl")], input=json.dumps(record),
            env={"PATH": rootside.SAFE_PATH}, cwd="/", capture_output=True, text=True,
            timeout=120)

    assert result.returncode == 0, result.stderr
    assert "s3://helios-helios-backup-" in result.stdout and "/helios/audit/" in result.stdout
    assert denials.seen == []


# What a taken-over server would try against the history that moto's server names by its
# IAM action (moto 5.2 names a retention or legal hold "PutObject" and a bucket's Object
# Lock "CreateBucket": those are judged by moto's evaluator below, under their names).
def _rewrites(bucket, key, version):
    return [
        ("delete_object", dict(Key=key, VersionId=version, BypassGovernanceRetention=True)),
        ("delete_object", dict(Key=key)),
        ("put_bucket_lifecycle_configuration", dict(LifecycleConfiguration={"Rules": [
            {"ID": "erase", "Status": "Enabled", "Filter": {"Prefix": ""},
             "NoncurrentVersionExpiration": {"NoncurrentDays": 1}}]})),
        ("put_bucket_versioning", dict(VersioningConfiguration={"Status": "Suspended"})),
        ("put_bucket_policy", dict(Policy=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
             "Resource": f"arn:aws:s3:::{bucket}/*"}]}))),
        ("delete_bucket_policy", {}),
    ]


def test_the_instance_role_cannot_shorten_lift_or_outlive_the_lock(site, role_documents,
                                                                  monkeypatch):
    """Each attempt is refused, also with a policy granting s3:* added to the role: the
    role's explicit Deny wins over any Allow."""
    s3 = boto3.client("s3")
    bucket = s3.list_buckets()["Buckets"][0]["Name"]
    key = "helios/daily/2026-01-01T000000Z/db.dump"
    version = s3.put_object(Bucket=bucket, Key=key, Body=b"dump",
                            ChecksumAlgorithm="SHA256")["VersionId"]
    everything = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}

    for documents in (role_documents, role_documents + [everything]):
        let_through = []
        with enforced(documents, monkeypatch):
            role = boto3.session.Session().client("s3")
            for name, kwargs in _rewrites(bucket, key, version):
                try:
                    getattr(role, name)(Bucket=bucket, **kwargs)
                    let_through.append(name)
                except role.exceptions.ClientError as exc:
                    assert exc.response["Error"]["Code"] == "AccessDenied", (name, exc)
        assert let_through == []
        requests = [(action, arn) for action in backups.NEVER_ACTIONS
                    for arn in (f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/{key}")]
        assert len(refused(documents, requests)) == len(requests)
    assert s3.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read() == b"dump"
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
