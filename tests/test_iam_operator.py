"""The operator's policy, as ``aws_provision --operator-policy`` publishes it, proven by use:
the commands run against the moto server with IAM enforced, with a user carrying exactly
that policy (adapted for what moto cannot judge: iam_enforcement.py), through the same
fast paths as test_provision_aws.py (``--skip-host``, no VM).

Then each action is taken out in turn and some request the commands made must be
refused; the resource ARNs and condition keys moto cannot judge are checked against
AWS's service authorization reference.
"""

import contextlib
import json

import boto3
import pytest

from fixtures import run_manage
from helios_aws.aws import operator, policies
from iam_enforcement import actions, enforced, refused, without
from test_aws_check_backup import write_backup, write_drill
from test_provision_aws import (  # noqa: F401  (aws, host_keys, configured, project: fixtures)
    DOMAIN, EMAIL, SETTINGS, aws, configured, create_zone, host_keys, project,
)

CONFIGURE = ("--no-input", "--domain", DOMAIN, "--email", EMAIL, "--auth-systems", "password",
             "--alert-email", "ops@example.org")


def published(project):
    printed = run_manage(project, "aws_provision", SETTINGS, "--operator-policy")
    assert printed.returncode == 0, printed.stderr
    return json.loads(printed.stdout)


def drift(project):
    """What the next run must put right, found by its tag (the state file is gone):
    IMDSv1 allowed, the instance without its role, an extra inbound rule; and a backup
    with its drill record in the bucket, for aws_backup --list and aws_check to read."""
    (project / "deploy" / "state.json").unlink()
    ec2 = boto3.client("ec2")
    instance = ec2.describe_instances(Filters=[
        {"Name": "tag:helios-aws:deployment", "Values": ["helios"]},
        {"Name": "instance-state-name", "Values": ["running"]}])["Reservations"][0][
        "Instances"][0]
    ec2.modify_instance_metadata_options(InstanceId=instance["InstanceId"],
                                         HttpTokens="optional")
    for association in ec2.describe_iam_instance_profile_associations()[
            "IamInstanceProfileAssociations"]:
        ec2.disassociate_iam_instance_profile(AssociationId=association["AssociationId"])
    ec2.authorize_security_group_ingress(
        GroupId=instance["SecurityGroups"][0]["GroupId"], IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080,
             "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    check, = boto3.client("route53").list_health_checks()["HealthChecks"]
    boto3.client("route53").update_health_check(HealthCheckId=check["Id"], Port=8443)
    topic = boto3.client("sns").list_topics()["Topics"][0]["TopicArn"]
    boto3.client("sns").subscribe(TopicArn=topic, Protocol="email", Endpoint="gone@example.org")
    bucket = without_bucket_policy()
    folder = write_backup(bucket, hours_ago=2)
    write_drill(bucket, folder, days_ago=0)


def without_bucket_policy(project=None):
    """moto refuses every object request to a bucket whose policy has a condition (see
    test_backup.py): the TLS-only policy goes before objects are read."""
    s3 = boto3.client("s3")
    bucket = s3.list_buckets()["Buckets"][0]["Name"]
    s3.delete_bucket_policy(Bucket=bucket)
    return bucket


def mail_keys(project):
    configured = run_manage(project, "aws_configure", SETTINGS, *CONFIGURE,
                            "--ses-credentials", "keys")
    assert configured.returncode == 0, configured.stderr


# (what it is, the command, what to do first with the suite's own keys)
LIFECYCLE = (
    ("aws_configure", ("aws_configure", *CONFIGURE), None),
    ("create", ("aws_provision", "--skip-host"), None),
    ("no-op", ("aws_provision", "--skip-host"), None),
    ("adopt and repair", ("aws_provision", "--skip-host"), drift),
    # No SSH server answers for moto's instance: the election freeze cannot be read, so
    # --stop and --destroy need --force --reason, recorded in the bucket by the operator.
    ("stop", ("aws_provision", "--stop", "--force", "--reason", "moving the server"),
     without_bucket_policy),
    ("start", ("aws_provision", "--start"), None),
    ("test alert", ("aws_provision", "--test-alert"), None),
    ("aws_check", ("aws_check", "--only", "aws", "--format", "json"), without_bucket_policy),
    ("aws_backup --list", ("aws_backup", "--list"), None),
    ("destroy", ("aws_provision", "--destroy", "--no-input", "--no-backup", "--force",
                  "--reason", "end of the pilot"), None),
    ("create again: the saved key, keys for mail", ("aws_provision", "--skip-host"),
     mail_keys),
    ("destroy with the backups", ("aws_provision", "--destroy", "--no-input", "--no-backup",
                                  "--no-snapshot", "--delete-backups", "helios", "--force",
                                  "--reason", "end of the pilot"),
     without_bucket_policy),
)


@contextlib.contextmanager
def as_administrator():
    """moto's enforcement paused, with the suite's own keys (set-up between steps)."""
    import moto.settings

    with pytest.MonkeyPatch.context() as admin:
        admin.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))
        admin.setenv("AWS_ACCESS_KEY_ID", "testing")
        admin.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        yield


def lifecycle(project):
    """Every operator command that reaches AWS, in a deployment's order, with the paths
    that repair drift, import the saved key and delete backups; returns
    [(step, CompletedProcess)] up to the first that failed."""
    done = []
    for step, args, before in LIFECYCLE:
        if before:
            with as_administrator():
                before(project)
        result = run_manage(project, args[0], SETTINGS, *args[1:], timeout=300)
        failed = result.returncode != 0
        if step == "aws_check":
            # Judged by whether AWS answered, not by the verdict on a moto instance.
            failed = "AccessDenied" in result.stdout + result.stderr or not result.stdout
        done.append((step, result))
        if failed:
            break
    return done


def test_the_published_policy_is_well_formed_by_aws_reference(project):
    policy = published(project)

    assert policies.problems(policy) == []
    assert {s["Sid"] for s in policy["Statement"]} == {p.sid for p in operator.PERMISSIONS}
    # Scoped to this deployment where AWS allows it.
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["OwnBucket"]["Resource"] == ["arn:aws:s3:::helios-helios-backup-*"]
    assert by_sid["OwnRole"]["Resource"] == [
        "arn:aws:iam::123456789012:role/helios-aws/helios-helios-us-east-1"]
    assert by_sid["ChangeTagged"]["Condition"] == {
        "StringEquals": {"aws:ResourceTag/helios-aws:deployment": "helios"}}


def test_every_command_runs_and_every_action_is_needed(project, monkeypatch):
    """The whole lifecycle runs once under enforcement with exactly the published policy,
    recording every request. Then each action is taken out in turn and moto's own
    evaluator judges those requests again: some must be refused (running the lifecycle
    once per action would take most of an hour)."""
    create_zone()
    policy = published(project)

    with enforced([policy], monkeypatch) as denials:
        done = lifecycle(project)

    last = done[-1][1]
    assert done[-1][0] == LIFECYCLE[-1][0], last.stdout + last.stderr + str(denials.seen)
    assert denials.seen == []
    assert [step for step, r in done if r.returncode and step != "aws_check"] == [], last.stderr
    # moto's evaluator, asked afterwards, refuses a request or two its server let through
    # (DeleteObjects, judged on the bucket): only what a removal adds counts.
    baseline = set(refused([policy], denials.made))
    unneeded = [action for action in actions([policy])
                if not set(refused(without([policy], action), denials.made)) - baseline]
    assert sorted(unneeded) == sorted(NOT_SHOWN_BY_MOTO), set(unneeded) ^ set(NOT_SHOWN_BY_MOTO)


# Actions a command needs that moto 5.2 does not authorize, or that this lifecycle does
# not reach, with where they are needed.
NOT_SHOWN_BY_MOTO = {
    # AWS authorizes the tags of a creating call (TagSpecifications, Tags=) separately;
    # moto does not.
    "ec2:CreateTags": "every creating call's TagSpecifications",
    "iam:TagRole": "MailRoleStep: create_role(Tags=...)",
    "iam:TagInstanceProfile": "MailRoleStep: create_instance_profile(Tags=...)",
    "iam:TagUser": "MailUserStep: create_user(Tags=...)",
    # AWS checks iam:PassRole when an instance is given a role; moto does not.
    "iam:PassRole": "InstanceStep: run_instances / associate_iam_instance_profile",
    # Only when the instance carries another instance profile than the deployment's.
    "ec2:ReplaceIamInstanceProfileAssociation": "InstanceStep: a foreign instance profile",
    "s3:PutBucketOwnershipControls": "BackupBucketStep: create_bucket(ObjectOwnership=...)",
    # AWS authorizes deleting a version (DeleteObjects with VersionId) as
    # s3:DeleteObjectVersion; moto judges every key of DeleteObjects as s3:DeleteObject.
    "s3:DeleteObjectVersion": "backups.empty_and_delete (--destroy --delete-backups)",
    # moto does not serve SES v2's GetAccount (the suite stubs it).
    "ses:GetAccount": "MailStep, aws_check aws.W001: sesv2.get_account",
    # Only when another deployment still uses a shared identity at --destroy
    # (test_provision_aws.py: test_destroying_one_of_two_deployments_...).
    "ses:UntagResource": "MailStep.destroy of a shared identity",
    # moto serves no price list: the plan falls back to its table (tests/test_pricing.py
    # stubs the answer).
    "pricing:GetProducts": "every --plan's price of the instance (aws/pricing.py)",
    # AWS checks it when a delete asks to bypass governance-mode retention; moto lets
    # whoever may delete the version bypass it.
    "s3:BypassGovernanceRetention": "backups.empty_and_delete (--destroy --delete-backups)",
    # AWS makes CloudWatch's role for EC2 actions with the first such alarm; moto makes none.
    "iam:CreateServiceLinkedRole": "MachineAlarmsStep: put_metric_alarm with recover/reboot",
    # moto does not serve SES v2's PutAccountDetails (tests/test_mail_ready.py stubs it).
    "ses:PutAccountDetails": "aws_provision --request-production-access",
}
