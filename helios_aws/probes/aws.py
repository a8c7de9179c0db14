"""AWS probes: the deployment's resources, found by their ``helios-aws:deployment`` tag.

Tags are the truth (as for aws_provision), so these probes work without a state file.
Every call goes through the project's one session factory and ``translate``; a probe
that finds nothing tagged reports skipped (nothing is provisioned yet), never passed.
"""

import ipaddress

import botocore.exceptions

from ..aws.session import NO_CREDENTIALS_HINT, TAG_KEY, translate
from .base import Skip, failed, passed, probe, warned

ALLOWED_PORTS = {22, 80, 443}
LIVE_STATES = ("pending", "running", "stopping", "stopped")
QUOTA_WARNING_SHARE = 0.1
# What an endpoint without SES v2's GetAccount (moto) answers.
NO_OPERATION_CODES = {"404", "NotFoundException", "UnknownOperationException",
                      "InvalidAction"}


def session(ctx):
    """The AWS session, or Skip when no credentials can be found."""
    aws = ctx.aws()
    credentials = ctx.once("aws-credentials", aws.session.get_credentials)
    if credentials is None:
        raise Skip("No AWS credentials were found.", NO_CREDENTIALS_HINT)
    return aws


def _tag_filter(ctx):
    return {"Name": f"tag:{TAG_KEY}", "Values": [ctx.deployment.name]}


def _find_instance(ctx):
    ec2 = session(ctx).client("ec2")
    with translate("look up the deployment's instance"):
        reservations = ec2.describe_instances(Filters=[
            _tag_filter(ctx), {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
        ])["Reservations"]
    instances = [i for r in reservations for i in r["Instances"]]
    if not instances:
        raise Skip(f"No instance is tagged {TAG_KEY}={ctx.deployment.name} in "
                   f"{ctx.deployment.region}: run aws_provision first.")
    return instances


def instance(ctx):
    """The deployment's one instance (Skip when none is provisioned)."""
    instances = ctx.once("instance", lambda: _find_instance(ctx))
    return sorted(instances, key=lambda i: i["LaunchTime"])[-1]


def _find_address(ctx):
    ec2 = session(ctx).client("ec2")
    with translate("look up the deployment's Elastic IP"):
        addresses = ec2.describe_addresses(Filters=[_tag_filter(ctx)])["Addresses"]
    return addresses[0] if addresses else None


def elastic_ip(ctx):
    return ctx.once("address", lambda: _find_address(ctx))


@probe("aws.E001", "The instance is running",
       "Start it (`aws ec2 start-instances`) or run aws_provision, which also replaces a "
       "terminated one.")
def instance_running(ctx):
    instances = ctx.once("instance", lambda: _find_instance(ctx))
    if len(instances) > 1:
        ids = ", ".join(i["InstanceId"] for i in instances)
        return failed(f"{len(instances)} instances carry the deployment's tag: {ids}.",
                      "Terminate the ones that are not serving the site.")
    current = instances[0]
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
    ec2 = session(ctx).client("ec2")
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


@probe("aws.E005", "The security group opens only 22 (not to the world), 80 and 443",
       "Remove the extra inbound rules, and limit SSH to your address: "
       "`aws ec2 revoke-security-group-ingress ...`, or aws_provision --ssh-cidr "
       "203.0.113.7/32.")
def security_group(ctx):
    current = instance(ctx)
    group_ids = [g["GroupId"] for g in current.get("SecurityGroups", [])]
    if not group_ids:
        return failed(f"{current['InstanceId']} has no security group to check.")
    ec2 = session(ctx).client("ec2")
    with translate("describe the instance's security groups"):
        groups = ec2.describe_security_groups(GroupIds=group_ids)["SecurityGroups"]
    problems = [f"{g['GroupId']}: {p}" for g in groups for rule in g.get("IpPermissions", [])
                for p in _rule_problems(rule)]
    if problems:
        return failed("Opens more than it should: " + "; ".join(problems) + ".")
    return passed(f"{', '.join(group_ids)} open(s) only SSH (not to the world), 80 and 443.")


def _hosted_zone(route53, domain):
    """The public hosted zone that holds ``domain`` (the longest matching name)."""
    labels = domain.rstrip(".").split(".")
    for start in range(len(labels) - 1):
        name = ".".join(labels[start:]) + "."
        with translate(f"look up the Route 53 zone {name}"):
            zones = route53.list_hosted_zones_by_name(DNSName=name, MaxItems="1")
        for zone in zones["HostedZones"]:
            if zone["Name"] == name and not zone.get("Config", {}).get("PrivateZone"):
                return zone
    return None


@probe("aws.E006", "The Route 53 record of the domain points at the Elastic IP",
       "UPSERT the domain's A record with the Elastic IP as its only value (aws_provision "
       "does it).")
def dns_record(ctx):
    domain = ctx.deployment.domain
    route53 = session(ctx).client("route53")
    zone = _hosted_zone(route53, domain)
    if zone is None:
        raise Skip(f"No public Route 53 zone holds {domain}: its DNS is managed elsewhere "
                   "(site.E001 checks what it resolves to).")
    address = elastic_ip(ctx)
    if address is None:
        return failed(f"No Elastic IP is tagged {TAG_KEY}={ctx.deployment.name} to compare "
                      "the record with.")
    with translate(f"read the A record of {domain}"):
        records = route53.list_resource_record_sets(
            HostedZoneId=zone["Id"], StartRecordName=domain, StartRecordType="A",
            MaxItems="1")["ResourceRecordSets"]
    record = next((r for r in records if r["Name"].rstrip(".") == domain
                   and r["Type"] == "A"), None)
    if record is None:
        return failed(f"Zone {zone['Name'].rstrip('.')} has no A record for {domain}.")
    values = sorted(r["Value"] for r in record.get("ResourceRecords", []))
    if values == [address["PublicIp"]]:
        return passed(f"A {domain} -> {address['PublicIp']} in zone "
                      f"{zone['Name'].rstrip('.')}.")
    return failed(f"A {domain} -> {', '.join(values) or '(alias)'}, expected "
                  f"{address['PublicIp']}.")


@probe("aws.E007", "The sender's SES identities are verified, with DKIM",
       "Publish the verification and DKIM CNAME records SES gives for the domain (in "
       "Route 53 aws_provision does it) and wait for SES to see them.")
def ses_identities(ctx):
    sender = ctx.deployment.email
    if not sender:
        raise Skip("The deployment has no sender address (--email).")
    domain = sender.rsplit("@", 1)[-1]
    ses = session(ctx).client("ses")
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


def _account(ctx):
    """SES v2's account details, or None where the endpoint lacks GetAccount."""
    sesv2 = session(ctx).client("sesv2")
    try:
        return sesv2.get_account()
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in NO_OPERATION_CODES:
            return None
        with translate("read the SES account"):
            raise


@probe("aws.W001", "SES is out of the sandbox, sending, with quota left",
       "Request production access (`aws sesv2 put-account-details --production-access-"
       "enabled ...`, or the SES console): in the sandbox only verified recipients get "
       "mail, 200 a day.")
def ses_account(ctx):
    account = _account(ctx)
    if account is None:
        ses = session(ctx).client("ses")
        with translate("read the SES sending quota"):
            quota = ses.get_send_quota()
        raise Skip(f"This SES endpoint does not report the sandbox status (no SES v2 "
                   f"GetAccount); quota: {quota['SentLast24Hours']:g} of "
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
