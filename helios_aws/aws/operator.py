"""The least-privilege IAM policy an operator needs to run every command for one
deployment (``aws_provision --operator-policy`` prints it): to use instead of
administrator keys.

Everything is in :data:`PERMISSIONS`, one row per group of actions with the code that
needs them and the resources they may touch, so a feature that makes a new AWS call adds
one row (or one action to a row). The rows are scoped as far as AWS allows: by name for
IAM, S3, SES and SSM (the deployment's role, instance profile and user, its bucket, its
identities, the public image parameters); by the deployment's tag for every EC2 change
to a resource that exists (stop, start, terminate, release, delete...), and by the tag
the request carries for the creating calls. What AWS cannot scope (Describe*, listing
buckets or hosted zones, the SES account's quota) is on ``*``; AWS's service
authorization reference says which (``helios_aws.aws.policies.problems`` checks every
row against it).
"""

import dataclasses

from .identity import IAM_PATH, mail_identities
from .session import TAG_KEY


@dataclasses.dataclass(frozen=True)
class Permission:
    sid: str
    needed_by: str
    actions: tuple
    # "any", "tagged" (the deployment's tag on the resource), "tagging" (the request
    # tags what it creates with the deployment's tag), or a function of Names -> ARNs.
    scope: object = "any"


@dataclasses.dataclass(frozen=True)
class Names:
    """What the ARNs of one deployment are made of."""

    partition: str
    account: str
    region: str
    deployment: str
    domain: str
    email: str

    def arn(self, service, region, account, resource):
        return f"arn:{self.partition}:{service}:{region}:{account}:{resource}"

    @property
    def iam_name(self):
        return f"helios-{self.deployment}-{self.region}"


def _iam(kind):
    return lambda n: [n.arn("iam", "", n.account, f"{kind}{IAM_PATH}{n.iam_name}")]


def _bucket(n):
    return [f"arn:{n.partition}:s3:::helios-{n.deployment}-backup-*"]


def _objects(n):
    return [f"arn:{n.partition}:s3:::helios-{n.deployment}-backup-*/{n.deployment}/*"]


def _identities(n):
    found = [i for i in mail_identities(_Deployment(n.email)) if i]
    return [n.arn("ses", n.region, n.account, f"identity/{i}") for i in found]


class _Deployment:
    def __init__(self, email):
        self.email = email


def _image_parameters(n):
    return [n.arn("ssm", n.region, "", "parameter/aws/service/*")]


def _hosted_zones(n):
    return [f"arn:{n.partition}:route53:::hostedzone/*"]


def _changes(n):
    return [f"arn:{n.partition}:route53:::change/*"]


def _topics(n):
    # The deployment's region, and us-east-1 for the site's alarm (watch.py).
    return sorted({n.arn("sns", region, n.account, f"helios-{n.deployment}-alerts")
                   for region in (n.region, "us-east-1")})


def _alarms(n):
    return sorted({n.arn("cloudwatch", region, n.account, f"alarm:helios-{n.deployment}-*")
                   for region in (n.region, "us-east-1")})


def _events_role(n):
    return [n.arn("iam", "", n.account,
                  "role/aws-service-role/events.amazonaws.com/AWSServiceRoleForCloudWatchEvents*")]


def _health_checks(n):
    return [f"arn:{n.partition}:route53:::healthcheck/*"]


PERMISSIONS = (
    # Reads that AWS does not scope to a resource.
    Permission("ReadEc2", "every step's read(), aws_check's aws.E001-E005, the waiters", (
        "ec2:DescribeAddresses", "ec2:DescribeIamInstanceProfileAssociations",
        "ec2:DescribeImages", "ec2:DescribeInstanceTypes", "ec2:DescribeInstances",
        "ec2:DescribeInstanceStatus", "ec2:DescribeKeyPairs", "ec2:DescribeSecurityGroups",
        "ec2:DescribeSnapshots", "ec2:DescribeVolumes", "ec2:DescribeVpcs")),
    Permission("ReadImageParameter", "ImageStep: the OS's latest image",
               ("ssm:GetParameters",), _image_parameters),
    # EC2: creating, only with the deployment's tag on what is created.
    Permission("CreateTagged", "KeyPairStep, SecurityGroupStep, InstanceStep, "
               "ElasticIPStep, --destroy's snapshot", (
                   "ec2:AllocateAddress", "ec2:CreateKeyPair", "ec2:CreateSecurityGroup",
                   "ec2:CreateSnapshot", "ec2:ImportKeyPair", "ec2:RunInstances"), "any"),
    Permission("TagWhileCreating", "TagSpecifications of every creating call",
               ("ec2:CreateTags",), "tagging"),
    # EC2: changing or deleting, only what carries the deployment's tag.
    Permission("ChangeTagged", "SecurityGroupStep (drift), InstanceStep, ElasticIPStep, "
               "--stop, --start, --destroy", (
                   "ec2:AssociateAddress", "ec2:AssociateIamInstanceProfile",
                   "ec2:AuthorizeSecurityGroupIngress", "ec2:DeleteKeyPair",
                   "ec2:DeleteSecurityGroup", "ec2:DisassociateAddress",
                   "ec2:GetConsoleOutput", "ec2:ModifyInstanceMetadataOptions",
                   "ec2:ReleaseAddress", "ec2:ReplaceIamInstanceProfileAssociation",
                   "ec2:RevokeSecurityGroupIngress", "ec2:StartInstances",
                   "ec2:StopInstances", "ec2:TerminateInstances"), "tagged"),
    # IAM: the deployment's own role, instance profile and (--ses-credentials keys) user.
    Permission("OwnRole", "MailRoleStep, BackupBucketStep, aws_check aws.E022 and drift", (
        "iam:CreateRole", "iam:DeleteRole", "iam:DeleteRolePolicy", "iam:GetRole",
        "iam:GetRolePolicy", "iam:ListAttachedRolePolicies", "iam:ListRolePolicies",
        "iam:PutRolePolicy", "iam:TagRole"), _iam("role")),
    Permission("OwnInstanceProfile", "MailRoleStep", (
        "iam:AddRoleToInstanceProfile", "iam:CreateInstanceProfile",
        "iam:DeleteInstanceProfile", "iam:GetInstanceProfile",
        "iam:RemoveRoleFromInstanceProfile", "iam:TagInstanceProfile"),
        _iam("instance-profile")),
    Permission("PassOwnRoleToEc2", "InstanceStep (the instance gets the role)",
               ("iam:PassRole",), _iam("role")),
    Permission("OwnMailUser", "MailUserStep (--ses-credentials keys); --destroy's "
               "inventory of what is left", (
        "iam:CreateAccessKey", "iam:CreateUser", "iam:DeleteAccessKey", "iam:DeleteUser",
        "iam:DeleteUserPolicy", "iam:GetUser", "iam:GetUserPolicy", "iam:ListAccessKeys",
        "iam:PutUserPolicy", "iam:TagUser"), _iam("user")),
    # S3: the deployment's backup bucket and its prefix.
    Permission("FindBuckets", "BackupBucketStep.read, aws_backup --list, aws_check",
               ("s3:ListAllMyBuckets",)),
    Permission("OwnBucket", "BackupBucketStep, aws_backup --list, aws_check aws.E020-E022", (
        "s3:CreateBucket", "s3:DeleteBucket", "s3:GetBucketPolicy", "s3:GetBucketTagging",
        "s3:GetBucketVersioning", "s3:GetEncryptionConfiguration",
        "s3:GetLifecycleConfiguration", "s3:GetBucketPublicAccessBlock", "s3:ListBucket",
        "s3:ListBucketVersions", "s3:PutBucketPolicy", "s3:PutBucketTagging",
        "s3:PutBucketVersioning", "s3:PutEncryptionConfiguration",
        "s3:PutLifecycleConfiguration", "s3:PutBucketPublicAccessBlock",
        "s3:PutBucketOwnershipControls"), _bucket),
    Permission("OwnBackups", "aws_backup --list and aws_check (manifests, drill records); "
               "--destroy --delete-backups", (
                   "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:GetObject"), _objects),
    # SES: the deployment's identities; the account's status.
    # SES v1's identity calls take no resource (AWS's reference: "*"); v2's tags do.
    Permission("Identities", "MailStep, aws_check aws.E007", (
        "ses:DeleteIdentity", "ses:GetIdentityDkimAttributes",
        "ses:GetIdentityVerificationAttributes", "ses:VerifyDomainDkim",
        "ses:VerifyDomainIdentity", "ses:VerifyEmailIdentity")),
    Permission("OwnIdentityTags", "MailStep (which deployment uses an identity)", (
        "ses:ListTagsForResource", "ses:TagResource", "ses:UntagResource"), _identities),
    Permission("ReadSesAccount", "MailStep, aws_check aws.W001",
               ("ses:GetAccount", "ses:GetSendQuota")),
    # Route 53: the zone is found by name; records are the deployment's domain's.
    Permission("FindZones", "DNSStep, MailStep, aws_check aws.E006",
               ("route53:ListHostedZones",)),
    Permission("OwnRecords", "DNSStep, MailStep", (
        "route53:ChangeResourceRecordSets", "route53:ListResourceRecordSets"),
        _hosted_zones),
    Permission("WaitForRecords", "DNSStep (the change's INSYNC waiter)",
               ("route53:GetChange",), _changes),
    # The plan's monthly price of the instance (pricing.py; without it, the built-in table).
    Permission("ReadPrices", "every --plan's cost lines", ("pricing:GetProducts",)),
    # The election freeze's override of --stop/--destroy when the server cannot be reached:
    # its audit record goes to the bucket with the operator's own credentials.
    Permission("RecordOverrides", "--stop/--destroy --force --reason (audit record)",
               ("s3:PutObject",), lambda n: [
                   f"arn:{n.partition}:s3:::helios-{n.deployment}-backup-*/{n.deployment}"
                   "/audit/*"]),
    # The backups' Object Lock: read and put back by BackupBucketStep and aws_check; the
    # versions listed by aws_check's overwrite check (s3:ListBucketVersions, above).
    Permission("LockBackups", "BackupBucketStep, aws_check aws.E025", (
        "s3:GetBucketObjectLockConfiguration", "s3:PutBucketObjectLockConfiguration"),
        _bucket),
    # Governance mode yields to this only: deleting locked backups on purpose.
    Permission("DeleteLockedBackups", "--destroy --delete-backups (governance mode)",
               ("s3:BypassGovernanceRetention",), _objects),
    # The alarms (watch.py): the alerts topics, the alarms and the site's health check.
    Permission("OwnAlertTopics", "AlertTopicStep, --test-alert, aws_check aws.W051, "
               "--destroy's inventory", (
                   "sns:CreateTopic", "sns:DeleteTopic", "sns:ListSubscriptionsByTopic",
                   "sns:Publish", "sns:Subscribe"), _topics),
    Permission("AlertSubscriptions", "AlertTopicStep (an address dropped or confirmed), "
               "aws_check aws.W051", ("sns:GetSubscriptionAttributes", "sns:Unsubscribe")),
    Permission("OwnAlarms", "MachineAlarmsStep, SiteHealthStep, --stop, --start, --destroy, "
               "aws_check aws.E050", (
                   "cloudwatch:DeleteAlarms", "cloudwatch:DescribeAlarms",
                   "cloudwatch:DisableAlarmActions", "cloudwatch:EnableAlarmActions",
                   "cloudwatch:PutMetricAlarm"), _alarms),
    Permission("FindHealthChecks", "SiteHealthStep, --destroy's inventory",
               ("route53:CreateHealthCheck", "route53:ListHealthChecks")),
    Permission("OwnHealthCheck", "SiteHealthStep (drift), --destroy", (
        "route53:DeleteHealthCheck", "route53:UpdateHealthCheck"), _health_checks),
    # The first alarm with an EC2 action (recover, reboot) in an account makes the role
    # through which CloudWatch acts on instances.
    Permission("AlarmActionsRole", "MachineAlarmsStep (the first recover/reboot alarm)",
               ("iam:CreateServiceLinkedRole",), _events_role),
    # SES's reputation (CloudWatch publishes the rates; reading metrics takes no
    # resource) and the request out of the sandbox (an account-level setting).
    Permission("ReadSesReputation", "MailStep's plan, aws_check mail.W002",
               ("cloudwatch:GetMetricData",)),
    Permission("RequestSesProductionAccess", "aws_provision --request-production-access",
               ("ses:PutAccountDetails",)),
)


def names(deployment, account, partition="aws"):
    return Names(partition=partition, account=account, region=deployment.region,
                 deployment=deployment.name, domain=deployment.domain,
                 email=deployment.email or "")


def statement(permission, n):
    body = {"Sid": permission.sid, "Effect": "Allow", "Action": list(permission.actions)}
    if callable(permission.scope):
        body["Resource"] = permission.scope(n)
    else:
        body["Resource"] = "*"
    if permission.scope == "tagged":
        body["Condition"] = {"StringEquals": {f"aws:ResourceTag/{TAG_KEY}": n.deployment}}
    elif permission.scope == "tagging":
        body["Condition"] = {"StringEquals": {f"aws:RequestTag/{TAG_KEY}": n.deployment}}
    elif permission.sid == "PassOwnRoleToEc2":
        body["Condition"] = {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    return body


def policy(deployment, account, partition="aws"):
    """The operator's policy document for ``deployment`` in ``account``."""
    n = names(deployment, account, partition)
    return {"Version": "2012-10-17",
            "Statement": [statement(p, n) for p in PERMISSIONS]}
