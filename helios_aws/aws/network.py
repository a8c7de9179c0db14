"""Steps 4 and 7: the security group (who may connect) and the Elastic IP (the stable
public address)."""

import botocore.exceptions

from ..engine import ADOPT, CREATE, CREATED, UPDATE, UPDATED, Change
from ..errors import ConfigError
from ..params import validate_cidr
from . import pricing, ssh_access
from .base import AWSStep, ec2_name, pick, poll, tag_filter, tag_spec
from .session import call, error_code, translate

WORLD = ("0.0.0.0/0", "::/0")
POSTGRESQL_PORT = 5432
# How each kind of source appears in an EC2 permission.
SOURCE_FIELDS = {
    "ipv4": ("IpRanges", "CidrIp"),
    "ipv6": ("Ipv6Ranges", "CidrIpv6"),
    "group": ("UserIdGroupPairs", "GroupId"),
    "prefix-list": ("PrefixListIds", "PrefixListId"),
}


def desired_rules(deployment):
    """Inbound rules as (protocol, from port, to port, source kind, source)."""
    rules = set()
    if deployment.ssh_cidr:  # else port 22 is opened per run (ssh_access.py)
        network = validate_cidr(deployment.ssh_cidr)
        rules.add(("tcp", 22, 22, f"ipv{network.version}", str(network)))
    for port in (deployment.http_port, deployment.https_port):
        rules.add(("tcp", port, port, "ipv4", WORLD[0]))
        rules.add(("tcp", port, port, "ipv6", WORLD[1]))
    return rules


def actual_rules(group):
    rules = set()
    for perm in group.get("IpPermissions") or ():
        proto, low, high = perm["IpProtocol"], perm.get("FromPort"), perm.get("ToPort")
        for kind, (field, key) in SOURCE_FIELDS.items():
            for source in perm.get(field) or ():
                rules.add((proto, low, high, kind, source[key]))
    return rules


def permission(rule):
    proto, low, high, kind, source = rule
    perm = {"IpProtocol": proto}
    if low is not None and proto != "-1":
        perm["FromPort"], perm["ToPort"] = low, high
    field, key = SOURCE_FIELDS[kind]
    perm[field] = [{key: source}]
    return perm


def describe_rule(rule):
    proto, low, high, _, source = rule
    if proto == "-1":
        ports = "all traffic"
    else:
        ports = f"{proto} {low}" if low == high else f"{proto} {low}-{high}"
    return f"{ports} from {source}"


def _judged_rules(group):
    """The group's rules but those of runs still going (each run removes its own; a
    leftover of one that ended is drift)."""
    running = {ssh_access.rule_tuple(r) for r in ssh_access.run_rules(group)
               if not ssh_access.is_leftover(r)}
    return actual_rules(group) - running


def _covers_postgresql(rule):
    proto, low, high = rule[:3]
    return proto == "-1" or (low is not None and low <= POSTGRESQL_PORT <= high)


class SecurityGroupStep(AWSStep):
    """SSH only from --ssh-cidr; HTTP and HTTPS over IPv4 and IPv6; nothing else, ever
    PostgreSQL. Rules added or removed by hand are reported and put back."""

    name = "security group"
    state_key = "security_group"

    def read(self, ctx):
        ec2 = ctx.aws.client("ec2")
        groups = ctx.aws.cached("security_groups", lambda: call(
            "list the deployment's security groups", ec2.describe_security_groups,
            Filters=tag_filter(ctx))["SecurityGroups"])
        group = pick(ctx, "security group", groups, "GroupId", self.record(ctx).get("id"))
        if group:
            ctx.facts["security_group_id"] = group["GroupId"]
        return {"group": group}

    def plan(self, ctx, current):
        d = ctx.deployment
        desired = desired_rules(d)
        ssh = (f"SSH from {d.ssh_cidr} (standing rule)" if d.ssh_cidr else
               "SSH opened per run to the operator's address (no --ssh-cidr)")
        group = current["group"]
        if group is None:
            self._default_vpc(ctx)
            return Change(CREATE, *(f"allow {describe_rule(r)}" for r in sorted(desired)),
                          ssh)
        actual = _judged_rules(group)
        details = [f"allow {describe_rule(r)} (missing)" for r in sorted(desired - actual)]
        leftovers = {ssh_access.rule_tuple(r): r for r in ssh_access.run_rules(group)}
        for rule in sorted(actual - desired, key=str):
            why = " (PostgreSQL is never exposed)" if _covers_postgresql(rule) else ""
            if rule in leftovers:
                why = f" (left by the ended run of {leftovers[rule]['owner']})"
            details.append(f"remove {describe_rule(rule)}{why}")
        if details:
            return Change(UPDATE, f"rules of {group['GroupId']} drifted:", *details)
        return self.kept_or_adopted(self.record(ctx).get("id") == group["GroupId"],
                                    f"{group['GroupId']}: {ssh}, HTTP/HTTPS from anywhere")

    def _default_vpc(self, ctx):
        ec2 = ctx.aws.client("ec2")
        vpcs = ctx.aws.cached("default_vpc", lambda: call(
            "find the default VPC", ec2.describe_vpcs,
            Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"])
        if not vpcs:
            raise ConfigError(
                f"Region {ctx.aws.region} has no default VPC for the server.",
                "Create one with `aws ec2 create-default-vpc --region "
                f"{ctx.aws.region}` and run the command again.",
            )
        return vpcs[0]["VpcId"]

    def apply(self, ctx, current, change):
        ec2 = ctx.aws.client("ec2")
        ctx.aws.forget("security_groups")
        desired = desired_rules(ctx.deployment)
        group = current["group"]
        if group is None:
            name = ec2_name(ctx)
            created = call(
                "create the security group", ec2.create_security_group,
                hints={"InvalidGroup.Duplicate": f"A security group named {name} exists "
                       "without this deployment's tag: delete it, or tag it "
                       f"helios-aws:deployment={ctx.deployment.name} to adopt it."},
                GroupName=name, VpcId=self._default_vpc(ctx),
                Description=f"Helios {ctx.deployment.name}: SSH from the operator, HTTP, HTTPS",
                TagSpecifications=tag_spec(ctx, "security-group"))
            group_id = created["GroupId"]
            self.save_record(ctx, id=group_id)
            ctx.facts["security_group_id"] = group_id
            self._authorize(ec2, group_id, desired)
            return CREATED
        group_id = group["GroupId"]
        if change.action == ADOPT:
            return self.adopt(ctx, id=group_id)
        actual = _judged_rules(group)
        if actual - desired:
            call("remove drifted security group rules", ec2.revoke_security_group_ingress,
                 GroupId=group_id, IpPermissions=[permission(r) for r in actual - desired])
        self._authorize(ec2, group_id, desired - actual)
        self.save_record(ctx, id=group_id)
        return UPDATED

    def _authorize(self, ec2, group_id, rules):
        for rule in sorted(rules):
            # One rule a call: a rule already there (an interrupted run) is not an error.
            call("allow a security group rule", ec2.authorize_security_group_ingress,
                 missing=("InvalidPermission.Duplicate",),
                 GroupId=group_id, IpPermissions=[permission(rule)])

    def teardown(self, ctx, current):
        group = current["group"]
        return [f"security group {group['GroupName']} ({group['GroupId']})"] if group else []

    def destroy(self, ctx, current):
        group = current["group"]
        if not group:
            return []
        ec2 = ctx.aws.client("ec2")

        def attempt():
            # The terminated instance's network interface lingers for a little while.
            try:
                ec2.delete_security_group(GroupId=group["GroupId"])
                return True
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) == "DependencyViolation":
                    return False
                if error_code(exc) == "InvalidGroup.NotFound":
                    return True
                raise

        with translate(f"delete the security group {group['GroupId']}"):
            poll(attempt, f"delete the security group {group['GroupId']}", 300, 10,
                 "Something still uses the group; look in the EC2 console and run "
                 "--destroy again.")
        ctx.state.set(self.state_key, None)
        return [f"deleted security group {group['GroupId']}"]


class ElasticIPStep(AWSStep):
    """A tagged Elastic IP associated with the instance; an existing one is reused."""

    name = "Elastic IP"
    state_key = "elastic_ip"

    def read(self, ctx):
        ec2 = ctx.aws.client("ec2")
        addresses = ctx.aws.cached("addresses", lambda: call(
            "list the deployment's Elastic IPs", ec2.describe_addresses,
            Filters=tag_filter(ctx))["Addresses"])
        address = pick(ctx, "Elastic IP", addresses, "AllocationId",
                       self.record(ctx).get("allocation_id"))
        if address:
            ctx.facts["host"] = address["PublicIp"]
        return {"address": address}

    def plan(self, ctx, current):
        address = current["address"]
        instance_id = ctx.facts.get("instance_id")
        target = instance_id or "the new instance"
        if address is None:
            return Change(CREATE, f"allocate an address and associate it with {target}")
        ip = address["PublicIp"]
        if not instance_id or address.get("InstanceId") != instance_id:
            return Change(UPDATE, f"associate {ip} with {target}")
        return self.kept_or_adopted(
            self.record(ctx).get("allocation_id") == address["AllocationId"],
            f"{ip} ({address['AllocationId']}) on {instance_id}")

    def apply(self, ctx, current, change):
        address = current["address"]
        if change.action == ADOPT:
            return self.adopt(ctx, allocation_id=address["AllocationId"],
                              public_ip=address["PublicIp"])
        ec2 = ctx.aws.client("ec2")
        ctx.aws.forget("addresses")
        outcome = UPDATED
        if address is None:
            address = call("allocate an Elastic IP", ec2.allocate_address, Domain="vpc",
                           TagSpecifications=tag_spec(ctx, "elastic-ip"))
            outcome = CREATED
        self.save_record(ctx, allocation_id=address["AllocationId"],
                         public_ip=address["PublicIp"])
        ctx.facts["host"] = address["PublicIp"]
        instance_id = ctx.facts["instance_id"]
        call(f"associate {address['PublicIp']} with {instance_id}", ec2.associate_address,
             AllocationId=address["AllocationId"], InstanceId=instance_id,
             AllowReassociation=True)
        return outcome

    def cost_lines(self, ctx):
        return [("Public IPv4 address (Elastic IP, $0.005/h)", pricing.public_ipv4_month())]

    def teardown(self, ctx, current):
        address = current["address"]
        return [f"Elastic IP {address['PublicIp']} ({address['AllocationId']})"] if address else []

    def destroy(self, ctx, current):
        address = current["address"]
        if not address:
            return []
        ec2 = ctx.aws.client("ec2")
        if address.get("AssociationId"):
            call("disassociate the Elastic IP", ec2.disassociate_address,
                 missing=("InvalidAssociationID.NotFound",),
                 AssociationId=address["AssociationId"])
        call("release the Elastic IP", ec2.release_address,
             missing=("InvalidAllocationID.NotFound",), AllocationId=address["AllocationId"])
        ctx.state.set(self.state_key, None)
        return [f"released Elastic IP {address['PublicIp']}"]
