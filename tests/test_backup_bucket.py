"""The backup bucket and the instance role's backup policy against the moto server (over
HTTP): settings, drift repair, adoption by tag, least privilege, and ``--destroy`` with
and without the bucket, through the real ``aws_provision`` command.

What the role's policy allows is judged by :func:`helios_aws.aws.backups.harmful_actions`
(wildcards expanded against AWS's reference, itself checked on policies that do allow
deleting); tests/test_iam_enforced.py runs the real code with exactly that policy under
moto's IAM enforcement.
"""

import json

import boto3
import pytest

from helios_aws.aws import backups
from test_backup import provision_bucket
from test_provision_aws import (  # noqa: F401  (aws, host_keys, configured, project: fixtures)
    NAME, aws, configured, create_zone, forced, host_keys, project, run, tagged_left,
)

ROLE = f"helios-{NAME}-us-east-1"


class Deployed:
    """What provision_bucket needs of a configured project."""

    def __init__(self, project):
        self.deploy = project / "deploy"


def bucket_name():
    names = [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
    assert len(names) == 1
    return names[0]


def put_backup_objects(name, *bodies):
    """Objects written as the host writes them. moto treats the TLS-only policy's
    condition as a Deny of every object request (see test_backup.py), so it goes first."""
    s3 = boto3.client("s3")
    s3.delete_bucket_policy(Bucket=name)
    for body in bodies:
        s3.put_object(Bucket=name, Key=f"{NAME}/daily/x/db.dump", Body=body)


def role_policy():
    return boto3.client("iam").get_role_policy(
        RoleName=ROLE, PolicyName=backups.ROLE_POLICY_NAME)["PolicyDocument"]


def test_the_bucket_is_private_encrypted_versioned_tls_only_and_expires_dailies(project):
    name, lines = provision_bucket(Deployed(project))

    assert any(line.startswith("[3/3] backup bucket (S3): created") for line in lines)
    s3 = boto3.client("s3")
    assert name == bucket_name() and name.startswith("helios-helios-backup-")
    assert s3.get_bucket_tagging(Bucket=name)["TagSet"] == [
        {"Key": "helios-aws:deployment", "Value": NAME}, {"Key": "Name", "Value": name}]
    rule, = s3.get_bucket_encryption(Bucket=name)[
        "ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert s3.get_bucket_versioning(Bucket=name)["Status"] == "Enabled"
    assert s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True}
    statement, = json.loads(s3.get_bucket_policy(Bucket=name)["Policy"])["Statement"]
    assert statement["Effect"] == "Deny" and statement["Action"] == "s3:*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert sorted(statement["Resource"]) == [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"]
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]}
    assert rules["helios-daily-backups"]["Expiration"] == {"Days": 35}
    assert rules["helios-daily-backups"]["Filter"] == {"Prefix": f"{NAME}/daily/"}
    assert rules["helios-old-versions"]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": backups.NONCURRENT_DAYS}


def test_the_instance_role_may_write_and_read_its_prefix_and_never_delete(project):
    name, _ = provision_bucket(Deployed(project))

    policy = role_policy()
    assert backups.harmful_actions([policy], name, NAME) == []
    allowed = {(a, r) for s in policy["Statement"] if s["Effect"] == "Allow"
               for a in s["Action"] for r in s["Resource"]}
    assert ("s3:PutObject", f"arn:aws:s3:::{name}/{NAME}/*") in allowed
    assert {r for _, r in allowed} == {f"arn:aws:s3:::{name}/{NAME}/*", f"arn:aws:s3:::{name}"}
    listing, = [s for s in policy["Statement"] if s["Action"] == ["s3:ListBucket"]]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{NAME}/*"]}}


POWER_USER = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "NotAction": ["iam:*", "organizations:*", "account:*"],
     "Resource": "*"},
    {"Effect": "Allow", "Action": ["iam:CreateServiceLinkedRole", "iam:ListRoles"],
     "Resource": "*"}]}


@pytest.mark.parametrize("policy, expected", [
    ({"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]},
     "s3:DeleteObject"),
    ({"Statement": {"Effect": "Allow", "Action": ["S3:delete*"], "Resource": "*"}},
     "s3:DeleteObjectVersion"),
    ({"Statement": [{"Effect": "Allow", "Action": "s3:*Object*", "Resource": "*"}]},
     "s3:DeleteObject"),
    ({"Statement": [{"Effect": "Allow", "Action": "s3:Put*Retention", "Resource": "*"}]},
     "s3:PutObjectRetention"),
    ({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "arn:aws:s3:::*"}]},
     "s3:PutLifecycleConfiguration"),
    ({"Statement": [{"Effect": "Allow", "Action": "s3:Bypass*", "Resource": "*"}]},
     "s3:BypassGovernanceRetention"),
    (POWER_USER, "s3:PutBucketPolicy"),
], ids=["s3:*", "delete*", "*Object*", "retention", "*", "bypass", "PowerUserAccess"])
def test_a_policy_is_judged_by_what_it_allows_not_by_its_spelling(policy, expected):
    assert expected in backups.harmful_actions([policy], "b", NAME)


@pytest.mark.parametrize("policy", [
    {"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::other/*"}]},
    {"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                   {"Effect": "Deny", "Action": "s3:*", "Resource": "*"}]},
    {"Statement": [{"Effect": "Allow", "NotAction": "s3:*", "Resource": "*"}]},
    {"Statement": [{"Effect": "Allow", "Action": ["s3:GetObject*", "s3:List*"],
                    "Resource": "*"}]},
], ids=["other bucket", "denied", "NotAction s3", "reads only"])
def test_what_cannot_touch_the_backups_is_not_reported(policy):
    assert backups.harmful_actions([policy], "b", NAME) == []


def test_backup_days_is_a_deployment_parameter(project):
    provision_bucket(Deployed(project), backup_days=7)

    rules = boto3.client("s3").get_bucket_lifecycle_configuration(Bucket=bucket_name())["Rules"]
    assert {r["ID"]: r.get("Expiration") for r in rules}["helios-daily-backups"] == {"Days": 7}


def test_drift_in_every_setting_is_reported_and_repaired(project):
    name, _ = provision_bucket(Deployed(project))
    s3, iam = boto3.client("s3"), boto3.client("iam")
    s3.delete_bucket_encryption(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Suspended"})
    s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=dict(
        backups.PUBLIC_ACCESS, RestrictPublicBuckets=False))
    s3.delete_bucket_policy(Bucket=name)
    s3.delete_bucket_lifecycle(Bucket=name)
    iam.put_role_policy(RoleName=ROLE, PolicyName=backups.ROLE_POLICY_NAME,
                        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                            {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))

    _, lines = provision_bucket(Deployed(project))

    assert any(line.startswith("[3/3] backup bucket (S3): updated") for line in lines)
    _, again = provision_bucket(Deployed(project))
    assert any(line.startswith("[3/3] backup bucket (S3): unchanged") for line in again)
    assert s3.get_bucket_versioning(Bucket=name)["Status"] == "Enabled"
    assert s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]
    assert all(s3.get_public_access_block(Bucket=name)[
        "PublicAccessBlockConfiguration"].values())
    assert backups.tls_only(json.loads(s3.get_bucket_policy(Bucket=name)["Policy"]), name)
    assert len(s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]) == 2
    assert backups.harmful_actions([role_policy()], name, NAME) == []


def test_drift_is_shown_by_the_plan(project):
    create_zone()
    run(project)
    name = bucket_name()
    boto3.client("s3").put_bucket_versioning(Bucket=name,
                                             VersioningConfiguration={"Status": "Suspended"})
    boto3.client("s3").delete_bucket_encryption(Bucket=name)

    planned = run(project, "--plan")

    assert "backup bucket (S3): update" in planned.stdout
    assert "repair: default encryption is off" in planned.stdout
    assert "repair: versioning is Suspended" in planned.stdout
    assert "S3 backups, 35 daily of " in planned.stdout


def test_a_bucket_missing_from_the_state_file_is_adopted_by_its_tag(project):
    name, _ = provision_bucket(Deployed(project))
    (project / "deploy" / "state.json").unlink()

    _, lines = provision_bucket(Deployed(project))

    assert any(line.startswith("[3/3] backup bucket (S3): adopted") for line in lines)
    assert json.loads((project / "deploy" / "state.json").read_text())["backups"] == {
        "bucket": name}
    assert bucket_name() == name


def test_a_bucket_that_lost_its_tag_is_kept_and_the_fix_is_to_tag_it_again(project):
    name, _ = provision_bucket(Deployed(project))
    put_backup_objects(name, b"backup")
    boto3.client("s3").delete_bucket_tagging(Bucket=name)

    with pytest.raises(Exception) as failed:
        provision_bucket(Deployed(project))

    message = f"{failed.value} {failed.value.hint}"
    assert f"The S3 bucket {name} is in this account but has lost its" in message
    assert "do not delete it" in message
    assert f"aws s3api put-bucket-tagging --bucket {name}" in message
    assert "Delete it" not in message
    # Tagged again as told, it is adopted with its backups.
    boto3.client("s3").put_bucket_tagging(Bucket=name, Tagging={"TagSet": [
        {"Key": "helios-aws:deployment", "Value": NAME}, {"Key": "Name", "Value": name}]})
    _, lines = provision_bucket(Deployed(project))
    assert any(line.startswith("[3/3] backup bucket (S3): ") for line in lines)
    assert boto3.client("s3").list_object_versions(Bucket=name)["Versions"]


# ------------------------------------------------------------------------ destroy


def test_destroy_keeps_the_bucket_and_says_what_it_costs(project):
    create_zone()
    run(project)
    name = bucket_name()
    put_backup_objects(name, b"x" * 100)

    destroyed = forced(project, "--destroy", "--no-input", "--no-snapshot", "--no-backup")

    assert "No final backup (--no-backup)" in destroyed.stdout
    assert bucket_name() == name
    assert f"S3 bucket {name} with the backups (0.00 GiB), kept on purpose: delete it with " \
           f"aws_provision --destroy --delete-backups {NAME} ($0.00/month)" in destroyed.stdout
    assert tagged_left() == {}
    with pytest.raises(boto3.client("iam").exceptions.NoSuchEntityException):
        role_policy()


def test_destroy_stops_when_the_final_backup_fails(project):
    create_zone()
    run(project)

    refused = forced(project, "--destroy", "--no-input", "--no-snapshot", check=False)

    assert refused.returncode == 1
    assert "The final backup failed, so nothing was destroyed" in refused.stderr
    assert "--no-backup" in refused.stderr
    assert set(tagged_left()) >= {"instances", "addresses", "security_groups", "roles"}
    assert role_policy()


def test_destroy_deletes_the_bucket_only_with_the_deployments_name(project):
    create_zone()
    run(project)
    name = bucket_name()
    s3 = boto3.client("s3")
    put_backup_objects(name, b"one", b"two")

    wrong = forced(project, "--destroy", "--no-input", "--no-backup", "--delete-backups",
                "other", check=False)

    assert wrong.returncode == 1
    assert "--delete-backups 'other' is not the deployment's name" in wrong.stderr
    assert bucket_name() == name

    destroyed = forced(project, "--destroy", "--no-input", "--no-snapshot", "--no-backup",
                    "--delete-backups", NAME)

    assert f"S3 bucket {name} and EVERY BACKUP in it (--delete-backups)" in destroyed.stdout
    assert f"deleted S3 bucket {name} and its backups" in destroyed.stdout
    assert s3.list_buckets()["Buckets"] == []
    assert "Nothing tagged helios-aws:deployment=helios remains in us-east-1." in \
        destroyed.stdout


# ------------------------------------------------------------------------ Object Lock


def locked_version(name):
    """A backup object written as the host writes it; returns its version id."""
    s3 = boto3.client("s3")
    s3.delete_bucket_policy(Bucket=name)
    return s3.put_object(Bucket=name, Key=f"{NAME}/daily/x/db.dump", Body=b"backup",
                         ChecksumAlgorithm="SHA256")["VersionId"]


def test_every_backup_is_locked_for_backup_days_in_governance_mode(project):
    name, lines = provision_bucket(Deployed(project))

    s3 = boto3.client("s3")
    assert s3.get_object_lock_configuration(Bucket=name)["ObjectLockConfiguration"] == {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 35, "Years": 0}}}
    version = locked_version(name)
    with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=name, Key=f"{NAME}/daily/x/db.dump", VersionId=version)
    # Governance mode yields to whoever may bypass it, on purpose.
    s3.delete_object(Bucket=name, Key=f"{NAME}/daily/x/db.dump", VersionId=version,
                     BypassGovernanceRetention=True)


def test_compliance_mode_yields_to_nobody(project):
    name, _ = provision_bucket(Deployed(project), backup_lock="compliance", backup_days=7)

    s3 = boto3.client("s3")
    retention = s3.get_object_lock_configuration(Bucket=name)[
        "ObjectLockConfiguration"]["Rule"]["DefaultRetention"]
    assert (retention["Mode"], retention["Days"]) == ("COMPLIANCE", 7)
    version = locked_version(name)
    with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=name, Key=f"{NAME}/daily/x/db.dump", VersionId=version,
                         BypassGovernanceRetention=True)


def test_a_bucket_made_before_the_lock_gets_it_in_place_and_the_plan_says_so(project):
    from helios_aws import params
    name = backups.bucket_name(params.load(project / "deploy"), "123456789012")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=name)
    s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": [
        {"Key": "helios-aws:deployment", "Value": NAME}]})
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    # Left empty: moto 5.2 enables the lock in place only on an empty bucket ("Bucket
    # needs to be empty"); S3 itself allows it on any versioned bucket.
    create_zone()

    planned = run(project, "--plan")

    assert "repair: Object Lock is off, not 35 days (governance)" in planned.stdout
    run(project)
    assert s3.get_object_lock_configuration(Bucket=name)["ObjectLockConfiguration"][
        "Rule"]["DefaultRetention"]["Mode"] == "GOVERNANCE"
    again = run(project, "--plan")
    assert "backup bucket (S3): keep" in again.stdout
