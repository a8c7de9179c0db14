"""What is still there after ``--destroy``: everything tagged for the deployment that
exists or costs money, and the SES identities that still name it as a user, looked up
afresh (not from the state file)."""

from . import pricing
from .base import iam_name, tag_filter
from .compute import LIVE_STATES
from .identity import mail_identities
from .mail import identity_tags, users
from .session import call


def leftovers(ctx):
    """[(description, USD per month or None when free)] of what remains."""
    ec2 = ctx.aws.client("ec2")
    iam = ctx.aws.client("iam")
    tagged = tag_filter(ctx)
    found = []
    reservations = call("list instances", ec2.describe_instances, Filters=tagged + [
        {"Name": "instance-state-name", "Values": LIVE_STATES}])["Reservations"]
    for instance in (i for r in reservations for i in r["Instances"]):
        found.append((f"instance {instance['InstanceId']} ({instance['State']['Name']})",
                      pricing.instance_month(instance["InstanceType"])))
    for address in call("list Elastic IPs", ec2.describe_addresses, Filters=tagged)["Addresses"]:
        found.append((f"Elastic IP {address['PublicIp']} ({address['AllocationId']})",
                      pricing.public_ipv4_month()))
    for volume in call("list volumes", ec2.describe_volumes, Filters=tagged)["Volumes"]:
        found.append((f"EBS volume {volume['VolumeId']} ({volume['Size']} GiB)",
                      pricing.gp3_month(volume["Size"])))
    for snapshot in call("list snapshots", ec2.describe_snapshots, OwnerIds=["self"],
                         Filters=tagged)["Snapshots"]:
        found.append((f"snapshot {snapshot['SnapshotId']} ({snapshot['VolumeSize']} GiB), "
                      "kept on purpose: delete it with aws ec2 delete-snapshot "
                      f"--snapshot-id {snapshot['SnapshotId']} once you no longer need it",
                      pricing.snapshot_month(snapshot["VolumeSize"])))
    for group in call("list security groups", ec2.describe_security_groups,
                      Filters=tagged)["SecurityGroups"]:
        found.append((f"security group {group['GroupId']}", None))
    for pair in call("list key pairs", ec2.describe_key_pairs, Filters=tagged)["KeyPairs"]:
        found.append((f"key pair {pair['KeyName']}", None))
    identities = mail_identities(ctx.deployment)
    existing = call("list the SES identities", ctx.aws.client("ses").
                    get_identity_verification_attributes,
                    Identities=identities)["VerificationAttributes"]
    for identity in identities:
        if identity in existing and ctx.deployment.name in users(identity_tags(ctx, identity)):
            found.append((f"SES identity {identity}, which still names this deployment as a "
                          "user", None))
    name = iam_name(ctx)
    for what, operation, key in (("IAM role", iam.get_role, "RoleName"),
                                 ("IAM instance profile", iam.get_instance_profile,
                                  "InstanceProfileName"),
                                 ("IAM user", iam.get_user, "UserName")):
        if call(f"look for the {what}", operation, missing=("NoSuchEntity",), **{key: name}):
            found.append((f"{what} {name}", None))
    return found
