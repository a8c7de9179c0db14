"""aws_check's backup probes against moto (over HTTP), the bucket and role made by the
real AWS steps, backups and drill records written where the host writes them."""

import datetime
import json

import boto3
import pytest

from helios_aws import backup, params
from helios_aws.aws.session import AWS
from helios_aws.probes import base
from test_backup import provision_bucket
from test_backup_bucket import ROLE, Deployed, put_backup_objects  # noqa: F401
from test_provision_aws import aws, configured, host_keys, project  # noqa: F401 (fixtures)

BACKUP_PROBES = ("aws.E020", "aws.W020", "aws.E021", "aws.E022", "aws.E023", "aws.E024",
                 "aws.E025")


def check(project):
    deployment = params.load(project / "deploy")
    state = json.loads((project / "deploy" / "state.json").read_text())
    ctx = base.Context(deployment, state=state, aws=lambda: AWS(deployment.region))
    return {r.id: r for r in base.run([base.REGISTRY[i] for i in BACKUP_PROBES], ctx)}


def backdate(bucket, key, when):
    """Make S3's own time of ``key``'s versions ``when``: moto cannot be asked to store an
    object in the past through its API, so its record is changed in this process (the
    suite's moto server runs here), as the passing of time would."""
    from moto.s3.models import s3_backends
    for version in s3_backends["123456789012"]["aws"].buckets[bucket].keys.getlist(key):
        version.last_modified = when.replace(tzinfo=None)


def write_backup(bucket, hours_ago, stamped_hours_ago=None):
    """A backup S3 stored ``hours_ago``, named as taken ``stamped_hours_ago`` (the same
    unless a server lies)."""
    when = backup.now() - datetime.timedelta(hours=hours_ago)
    named = when if stamped_hours_ago is None else \
        backup.now() - datetime.timedelta(hours=stamped_hours_ago)
    folder = f"helios/daily/{backup.stamp(named)}/"
    s3 = boto3.client("s3")
    for name in (backup.DUMP, backup.MEDIA, backup.MANIFEST):
        s3.put_object(Bucket=bucket, Key=folder + name, Body=b"{}")
        backdate(bucket, folder + name, when)
    return folder


def write_drill(bucket, folder, days_ago, passed=True):
    when = backup.now() - datetime.timedelta(days=days_ago)
    # As backup.drill writes it (records.DRILL).
    record = {"backup": folder, "passed": passed, "started_at":
              when.strftime("%Y-%m-%dT%H:%M:%SZ"), "finished_at":
              when.strftime("%Y-%m-%dT%H:%M:%SZ"), "seconds": 12.5}
    record.update({"rows": 10, "tables": 3} if passed else {"error": "broken"})
    boto3.client("s3").put_object(Bucket=bucket, Key=f"helios/drills/{backup.stamp(when)}.json",
                                  Body=json.dumps(record).encode())


@pytest.fixture
def bucket(project):
    name, _ = provision_bucket(Deployed(project))
    return name


def test_a_fresh_bucket_has_no_backup_and_no_drill_yet(project, bucket, monkeypatch):
    results = check(project)

    # A new deployment's first backup comes with the timer's first night: a warning...
    assert results["aws.E020"].status == "warn"
    assert results["aws.E020"].message.startswith(
        f"There is no backup in s3://{bucket}/helios/ yet; the bucket is ")
    # ...and an error once the bucket is older than the 26 hours a backup may be.
    later = backup.now() + datetime.timedelta(hours=27)
    monkeypatch.setattr("helios_aws.probes.backup.now", lambda: later)
    late = check(project)["aws.E020"]
    assert late.status == "fail"
    assert late.message == f"There is no complete backup in s3://{bucket}/helios/."
    assert results["aws.W020"].status == "warn"
    assert results["aws.E021"].status == "pass"
    assert results["aws.E022"].status == "pass"
    assert results["aws.E023"].status == "pass", results["aws.E023"].message
    assert results["aws.E024"].status == "pass"
    assert results["aws.E025"].status == "pass", results["aws.E025"].message
    assert results["aws.E025"].message.endswith("locked for 35 days (governance mode).")


def test_backups_and_drills_by_age(project, bucket):
    put_backup_objects(bucket)  # lifts the policy moto cannot evaluate (test_backup.py)
    old = write_backup(bucket, hours_ago=30)
    write_drill(bucket, old, days_ago=9)

    stale = check(project)

    assert stale["aws.E020"].status == "fail"
    assert stale["aws.E020"].message == f"The newest backup, {old}, is 30.0 h old."
    assert stale["aws.W020"].status == "warn"
    assert "9.0 days ago" in stale["aws.W020"].message

    new = write_backup(bucket, hours_ago=2)
    write_drill(bucket, new, days_ago=1)
    write_drill(bucket, new, days_ago=0, passed=False)

    fresh = check(project)

    assert fresh["aws.E020"].status == "pass"
    assert fresh["aws.W020"].status == "pass"
    assert f"restored {new} 24.0 h ago" in fresh["aws.W020"].message


def test_a_bucket_that_lost_its_protections_fails(project, bucket):
    s3 = boto3.client("s3")
    s3.delete_bucket_encryption(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    s3.delete_public_access_block(Bucket=bucket)
    s3.delete_bucket_policy(Bucket=bucket)

    result = check(project)["aws.E021"]

    assert result.status == "fail"
    assert result.message == (
        f"s3://{bucket}: default encryption is off; versioning is Suspended; Block Public "
        "Access is off: BlockPublicAcls, IgnorePublicAcls, BlockPublicPolicy, "
        "RestrictPublicBuckets; the bucket policy does not deny requests without TLS.")


def test_a_role_that_may_delete_backups_fails(project, bucket):
    iam = boto3.client("iam")
    arn = iam.create_policy(PolicyName="too-much", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:Delete*", "Resource": "*"}]}))["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=ROLE, PolicyArn=arn)

    result = check(project)["aws.E022"]

    # The role's own policy refuses deleting a bucket, its policy, an object or a version
    # outright, whatever another policy grants: what is left is still reported.
    assert result.status == "fail"
    assert result.message == (
        f"Role {ROLE} may s3:DeleteBucketMetadataTableConfiguration, "
        "s3:DeleteBucketWebsite, s3:DeleteObjectTagging, s3:DeleteObjectVersionTagging "
        f"on s3://{bucket} (granted by too-much).")


@pytest.mark.parametrize("document", [
    {"Effect": "Allow", "NotAction": ["iam:*", "organizations:*", "account:*"],
     "Resource": "*"},
    {"Effect": "Allow", "Action": "s3:*Object*", "Resource": "*"},
], ids=["PowerUserAccess", "s3:*Object*"])
def test_a_role_granted_deletes_by_a_wildcard_or_notaction_fails(project, bucket, document):
    boto3.client("iam").put_role_policy(RoleName=ROLE, PolicyName="extra", PolicyDocument=
                                        json.dumps({"Version": "2012-10-17",
                                                    "Statement": [document]}))

    result = check(project)["aws.E022"]

    assert result.status == "fail"
    assert "s3:DeleteObject" in result.message and "(granted by extra)" in result.message


def test_a_bucket_policy_letting_another_account_in_fails(project, bucket):
    s3 = boto3.client("s3")
    policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    policy["Statement"].append({
        "Sid": "Partner", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::210987654321:root"},
        "Action": "s3:*", "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]})
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    result = check(project)["aws.E021"]

    assert result.status == "fail"
    assert result.message == (f"s3://{bucket}: the bucket policy lets other accounts in: "
                              "arn:aws:iam::210987654321:root may s3:*.")


def test_a_role_whose_policies_drifted_fails_naming_the_actions(project, bucket):
    iam = boto3.client("iam")
    document = iam.get_role_policy(RoleName=ROLE, PolicyName="helios-backup-write")[
        "PolicyDocument"]
    document["Statement"][0]["Action"] = ["s3:PutObject", "s3:PutObjectRetention"]
    iam.put_role_policy(RoleName=ROLE, PolicyName="helios-backup-write",
                        PolicyDocument=json.dumps(document))
    iam.put_role_policy(RoleName=ROLE, PolicyName="hand-made", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": "*"}]}))
    iam.delete_role_policy(RoleName=ROLE, PolicyName="helios-ses-send")

    result = check(project)["aws.E023"]

    assert result.status == "fail"
    assert result.message == (
        f"Role {ROLE}: helios-ses-send is missing (it allows ses:GetSendQuota, "
        "ses:SendRawEmail); helios-backup-write also allows s3:PutObjectRetention; "
        "helios-backup-write no longer allows s3:AbortMultipartUpload; hand-made, which "
        "aws_provision does not write, allows ssm:GetParameter.")


def test_a_backup_named_in_the_future_is_as_old_as_s3_says(project, bucket):
    put_backup_objects(bucket)
    lying = write_backup(bucket, hours_ago=30, stamped_hours_ago=-24 * 365 * 7000)

    result = check(project)["aws.E020"]

    assert result.status == "fail"
    assert result.message.startswith(
        f"The newest backup, {lying}, is 30.0 h old by S3's clock, though its name "
        "claims 9")


def test_an_overwritten_backup_is_an_incident(project, bucket):
    put_backup_objects(bucket)
    folder = write_backup(bucket, hours_ago=2)
    assert check(project)["aws.E024"].status == "pass"
    s3 = boto3.client("s3")
    first, = s3.list_object_versions(Bucket=bucket, Prefix=folder + backup.DUMP)["Versions"]
    s3.put_object(Bucket=bucket, Key=folder + backup.DUMP, Body=b"forged")

    result = check(project)["aws.E024"]

    assert result.status == "fail"
    assert result.message == (f"1 backup object(s) in s3://{bucket} were written more "
                              f"than once: {folder}{backup.DUMP} (2 versions, the first "
                              f"{first['VersionId']}).")
    assert "aws_restore --backup FOLDER --object-version FIRST" in \
        base.REGISTRY["aws.E024"].hint
