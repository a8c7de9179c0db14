"""AWS probes: the deployment's resources, found by their ``helios-aws:deployment`` tag.

Tags are the truth (as for aws_provision), so these probes work without a state file.
They read through the AWS half's own helpers (tag filters, hosted zones, record sets,
the SES account) and the project's one session factory; a probe that finds nothing
tagged reports skipped (nothing is provisioned yet), never passed.
"""

import ipaddress
import types

from ..aws.base import tag_filter
from ..aws.compute import LIVE_STATES
from ..aws.dns import find_record, find_zone, record_sets, values
from ..aws.identity import mail_identities
from ..aws.mail import sending_account
from ..aws import ssh_access
from ..aws.session import NO_CREDENTIALS_HINT, TAG_KEY, translate
from .base import Skip, failed, passed, probe, warned

ALLOWED_PORTS = {22, 80, 443}
QUOTA_WARNING_SHARE = 0.1


def session(ctx):
    """What the AWS half's helpers read (``.aws``, the session, and ``.deployment``), or
    Skip when no credentials can be found."""
    def build():
        aws = ctx.aws()
        if aws.session.get_credentials() is None:
            raise Skip("No AWS credentials were found.", NO_CREDENTIALS_HINT)
        return types.SimpleNamespace(aws=aws, deployment=ctx.deployment)

    return ctx.once("aws-session", build)


def _find_instances(ctx):
    view = session(ctx)
    ec2 = view.aws.client("ec2")
    with translate("look up the deployment's instance"):
        reservations = ec2.describe_instances(Filters=tag_filter(view) + [
            {"Name": "instance-state-name", "Values": LIVE_STATES}])["Reservations"]
    instances = [i for r in reservations for i in r["Instances"]]
    if not instances:
        raise Skip(f"No instance is tagged {TAG_KEY}={ctx.deployment.name} in "
                   f"{ctx.deployment.region}: run aws_provision first.")
    return instances


def instances(ctx):
    """The deployment's instances, not terminated (Skip when none is provisioned)."""
    return ctx.once("instances", lambda: _find_instances(ctx))


def instance(ctx):
    """The deployment's newest instance."""
    return sorted(instances(ctx), key=lambda i: i["LaunchTime"])[-1]


def _find_address(ctx):
    view = session(ctx)
    ec2 = view.aws.client("ec2")
    with translate("look up the deployment's Elastic IP"):
        addresses = ec2.describe_addresses(Filters=tag_filter(view))["Addresses"]
    return addresses[0] if addresses else None


def elastic_ip(ctx):
    return ctx.once("address", lambda: _find_address(ctx))


@probe("aws.E001", "The instance is running",
       "Start it (`aws ec2 start-instances`) or run aws_provision, which also replaces a "
       "terminated one.")
def instance_running(ctx):
    found = instances(ctx)
    if len(found) > 1:
        ids = ", ".join(i["InstanceId"] for i in found)
        return failed(f"{len(found)} instances carry the deployment's tag: {ids}.",
                      "Terminate the ones that are not serving the site.")
    current = found[0]
    state = current["State"]["Name"]
    if state == "running":
        return passed(f"{current['InstanceId']} ({current['InstanceType']}) is running.")
    return failed(f"{current['InstanceId']} is {state}.")


@probe("aws.E002", "The instance requires IMDSv2",
       "Run `aws ec2 modify-instance-metadata-options --instance-id ID --http-tokens "
       "required` (aws_provision launches instances that way).")
def imdsv2_required(ctx):
    current = instance(ctx)
    options = current.get("MetadataOptions", {})
    if options.get("HttpTokens") == "required":
        return passed(f"{current['InstanceId']} requires IMDSv2 session tokens.")
    return failed(f"{current['InstanceId']} accepts IMDSv1 (HttpTokens="
                  f"{options.get('HttpTokens', '?')}): a request forgery on the host could "
                  "read the instance role's credentials.")


@probe("aws.E003", "Every volume of the instance is encrypted",
       "EBS volumes cannot be encrypted in place: snapshot, copy the snapshot with "
       "encryption, and replace the volume (or re-provision with the default gp3 "
       "encrypted volume).")
def volumes_encrypted(ctx):
    current = instance(ctx)
    volume_ids = [m["Ebs"]["VolumeId"] for m in current.get("BlockDeviceMappings", [])
                  if "Ebs" in m]
    if not volume_ids:
        return failed(f"{current['InstanceId']} has no EBS volume to check.")
    ec2 = session(ctx).aws.client("ec2")
    with translate("describe the instance's volumes"):
        volumes = ec2.describe_volumes(VolumeIds=volume_ids)["Volumes"]
    plain = [v["VolumeId"] for v in volumes if not v.get("Encrypted")]
    if plain:
        return failed(f"Not encrypted: {', '.join(plain)}.")
    return passed(f"{len(volumes)} volume(s) encrypted: {', '.join(volume_ids)}.")


@probe("aws.E004", "The Elastic IP is attached to the instance",
       "Associate it: `aws ec2 associate-address --allocation-id ALLOC --instance-id ID` "
       "(or run aws_provision).")
def elastic_ip_attached(ctx):
    current = instance(ctx)
    address = elastic_ip(ctx)
    if address is None:
        return failed(f"No Elastic IP is tagged {TAG_KEY}={ctx.deployment.name}.")
    attached_to = address.get("InstanceId") or ""
    if attached_to == current["InstanceId"]:
        return passed(f"{address['PublicIp']} is attached to {attached_to}.")
    if attached_to:
        return failed(f"{address['PublicIp']} is attached to {attached_to}, not to "
                      f"{current['InstanceId']}.")
    return failed(f"{address['PublicIp']} ({address.get('AllocationId')}) is not attached "
                  "to any instance.")


def _rule_problems(permission):
    """What is wrong with one inbound rule: a port beyond 22/80/443, or 22 to the world."""
    protocol = permission.get("IpProtocol")
    ports = (permission.get("FromPort"), permission.get("ToPort"))
    sources = ([r["CidrIp"] for r in permission.get("IpRanges", [])]
               + [r["CidrIpv6"] for r in permission.get("Ipv6Ranges", [])]
               + [g.get("GroupId", "?") for g in permission.get("UserIdGroupPairs", [])]
               + [p.get("PrefixListId", "?") for p in permission.get("PrefixListIds", [])])
    if protocol != "tcp" or ports[0] != ports[1] or ports[0] not in ALLOWED_PORTS:
        span = "all ports" if protocol == "-1" else f"{protocol} {ports[0]}-{ports[1]}"
        return [f"{span} from {', '.join(sources)}"]
    if ports[0] == 22:
        world = [s for s in sources if "/" in s and ipaddress.ip_network(s).prefixlen == 0]
        if world:
            return [f"SSH (22) from {', '.join(world)}"]
    return []


def _instance_groups(ctx, group_ids):
    """The instance's security groups, read once for aws.E005 and aws.W040."""
    def read():
        ec2 = session(ctx).aws.client("ec2")
        with translate("describe the instance's security groups"):
            return ec2.describe_security_groups(GroupIds=group_ids)["SecurityGroups"]

    return ctx.once("instance-groups", read)


@probe("aws.E005", "The security group opens only 22 (not to the world), 80 and 443",
       "Remove the extra inbound rules, and limit SSH to your address: "
       "`aws ec2 revoke-security-group-ingress ...`, or aws_provision --ssh-cidr "
       "203.0.113.7/32.")
def security_group(ctx):
    current = instance(ctx)
    group_ids = [g["GroupId"] for g in current.get("SecurityGroups", [])]
    if not group_ids:
        return failed(f"{current['InstanceId']} has no security group to check.")
    groups = _instance_groups(ctx, group_ids)
    problems = [f"{g['GroupId']}: {p}" for g in groups for rule in g.get("IpPermissions", [])
                for p in _rule_problems(rule)]
    if problems:
        return failed("Opens more than it should: " + "; ".join(problems) + ".")
    return passed(f"{', '.join(group_ids)} open(s) only SSH (not to the world), 80 and 443.")


@probe("aws.E006", "The Route 53 record of the domain points at the Elastic IP",
       "UPSERT the domain's A record with the Elastic IP as its only value (aws_provision "
       "does it).")
def dns_record(ctx):
    domain = ctx.deployment.domain
    view = session(ctx)
    zone = find_zone(view, domain)
    if zone is None:
        raise Skip(f"No public Route 53 zone holds {domain}: its DNS is managed elsewhere "
                   "(site.E001 checks what it resolves to).")
    zone_name = zone["Name"].rstrip(".")
    address = elastic_ip(ctx)
    if address is None:
        return failed(f"No Elastic IP is tagged {TAG_KEY}={ctx.deployment.name} to compare "
                      "the record with.")
    record = find_record(record_sets(view, zone["Id"]), domain, "A")
    if record is None:
        return failed(f"Zone {zone_name} has no A record for {domain}.")
    found = sorted(values(record))
    if found == [address["PublicIp"]]:
        return passed(f"A {domain} -> {address['PublicIp']} in zone {zone_name}.")
    return failed(f"A {domain} -> {', '.join(found) or '(alias)'}, expected "
                  f"{address['PublicIp']}.")


@probe("aws.E007", "The sender's SES identities are verified, with DKIM",
       "Publish the verification and DKIM CNAME records SES gives for the domain (in "
       "Route 53 aws_provision does it) and wait for SES to see them.")
def ses_identities(ctx):
    if not ctx.deployment.email:
        raise Skip("The deployment has no sender address (--email).")
    domain, sender = mail_identities(ctx.deployment)
    ses = session(ctx).aws.client("ses")
    with translate("read the SES identities"):
        verification = ses.get_identity_verification_attributes(
            Identities=[domain, sender])["VerificationAttributes"]
        dkim = ses.get_identity_dkim_attributes(Identities=[domain])["DkimAttributes"]
    domain_status = verification.get(domain, {}).get("VerificationStatus", "absent")
    sender_status = verification.get(sender, {}).get("VerificationStatus", "absent")
    dkim_status = dkim.get(domain, {}).get("DkimVerificationStatus", "absent")
    facts = (f"domain {domain}: {domain_status}, DKIM {dkim_status}; address {sender}: "
             f"{sender_status}")
    if domain_status == "Success" and dkim_status == "Success":
        return passed(f"SES identities verified ({facts}).")
    return failed(f"SES identities not ready ({facts}).")


@probe("aws.W001", "SES is out of the sandbox, sending, with quota left",
       "Request production access (`aws sesv2 put-account-details --production-access-"
       "enabled ...`, or the SES console): in the sandbox only verified recipients get "
       "mail, 200 a day.")
def ses_account(ctx):
    view = session(ctx)
    account = sending_account(view)
    if "unknown" in account:
        ses = view.aws.client("ses")
        with translate("read the SES sending quota"):
            quota = ses.get_send_quota()
        raise Skip(f"SES did not report the sandbox status (GetAccount answered "
                   f"{account['unknown']}); quota: {quota['SentLast24Hours']:g} of "
                   f"{quota['Max24HourSend']:g} sent in 24 h.")
    quota = account.get("SendQuota", {})
    limit = quota.get("Max24HourSend", 0)
    sent = quota.get("SentLast24Hours", 0)
    usage = f"{sent:g} of {limit:g} sent in the last 24 h"
    if not account.get("SendingEnabled", True):
        return failed(f"Sending is disabled for this account ({usage}).",
                      "Look at the account's status in the SES console (a review or "
                      "pause after bounces or complaints).")
    if not account.get("ProductionAccessEnabled"):
        return warned(f"SES is in the sandbox: only verified recipients ({usage}).")
    if limit and (limit - sent) < limit * QUOTA_WARNING_SHARE:
        return warned(f"Less than {QUOTA_WARNING_SHARE:.0%} of the daily quota left "
                      f"({usage}).", "Ask AWS for a higher sending quota before an "
                      "election's invitations go out.")
    return passed(f"Production access, sending enabled, {usage}.")


@probe("aws.W040", "No SSH rule is left from a run that ended",
       "The next aws_provision, aws_backup or aws_restore removes it (its own address's "
       "rule too); or remove it now: `aws ec2 revoke-security-group-ingress --group-id "
       "GROUP --protocol tcp --port 22 --cidr ADDRESS`.")
def leftover_ssh_rules(ctx):
    # The instance's groups, as aws.E005 reads them: port 22 is opened in those.
    group_ids = [g["GroupId"] for g in instance(ctx).get("SecurityGroups", [])]
    if not group_ids:
        raise Skip(f"{instance(ctx)['InstanceId']} has no security group.")
    groups = _instance_groups(ctx, group_ids)
    moment = ssh_access.now()
    rules = [(g["GroupId"], r) for g in groups for r in ssh_access.run_rules(g)]
    left = [(gid, r) for gid, r in rules if ssh_access.is_leftover(r, moment)]
    if left:
        return failed("Port 22 is still open for runs that ended: " + "; ".join(
            f"{r['source']} in {gid}, from the run of {r['owner']} (pid {r['pid']}), opened "
            f"{ssh_access.describe_age(moment - r['start'])} ago" for gid, r in left) + ".")
    going = len(rules)
    if going:
        return passed(f"No leftover SSH rule; {going} run(s) going hold port 22 open "
                      "(this check's own included).")
    return passed("No SSH rule is left from an ended run.")
