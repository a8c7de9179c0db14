"""Step 8, and the Route 53 helpers the mail step shares: the hosted zone of a name
(longest suffix match), its record sets (read once a run), and bounded changes."""

import re

from ..engine import ADOPT, CREATE, CREATED, UPDATE, UPDATED, Change
from ..errors import ConfigError
from . import pricing
from .base import AWSStep
from .session import call, translate, wait

A_TTL = 300
QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')


def fqdn(name):
    return name.rstrip(".").lower() + "."


def txt_text(value):
    """The text of a TXT value as Route 53 shows it (quoted, maybe in several chunks)."""
    chunks = QUOTED_RE.findall(value)
    return "".join(chunks) if chunks else value


def zones(ctx):
    """Every hosted zone of the account, listed once a run."""
    def fetch():
        route53 = ctx.aws.client("route53")
        with translate("list the Route 53 hosted zones"):
            pages = route53.get_paginator("list_hosted_zones").paginate()
            return [zone for page in pages for zone in page["HostedZones"]]

    return ctx.aws.cached("zones", fetch)


def find_zone(ctx, domain):
    """The public hosted zone whose name is the longest suffix of ``domain``, or None."""
    name = fqdn(domain)
    matches = [z for z in zones(ctx) if not z.get("Config", {}).get("PrivateZone")
               and (name == z["Name"].lower() or name.endswith("." + z["Name"].lower()))]
    if not matches:
        return None
    longest = max(len(z["Name"]) for z in matches)
    best = [z for z in matches if len(z["Name"]) == longest]
    if len(best) > 1:
        raise ConfigError(
            f"{len(best)} public hosted zones are named {best[0]['Name']}: "
            f"{', '.join(z['Id'] for z in best)}.",
            "Delete the zone your registrar does not delegate to, and run the command again.",
        )
    return best[0]


def no_zone_error(domain):
    parent = ".".join(domain.split(".")[-2:])
    return ConfigError(
        f"No Route 53 hosted zone holds {domain}, so its DNS cannot be set.",
        f"Create a zone for the domain you own, e.g. `aws route53 create-hosted-zone "
        f"--name {parent} --caller-reference $(date +%s)`, and make the domain's "
        "registrar use the four name servers it lists. This tool never buys a domain.",
    )


def record_sets(ctx, zone_id):
    """Every record set of a zone, listed once a run (until a change forgets it)."""
    def fetch():
        route53 = ctx.aws.client("route53")
        with translate("list the zone's DNS records"):
            pages = route53.get_paginator("list_resource_record_sets").paginate(
                HostedZoneId=zone_id)
            return [rrset for page in pages for rrset in page["ResourceRecordSets"]]

    return ctx.aws.cached(("records", zone_id), fetch)


def find_record(rrsets, name, kind):
    name = fqdn(name)
    for rrset in rrsets:
        if rrset["Name"].lower() == name and rrset["Type"] == kind:
            return rrset
    return None


def values(rrset):
    return [r["Value"] for r in (rrset or {}).get("ResourceRecords") or ()]


def change_records(ctx, zone_id, changes, action, timeout=600):
    """Apply ``changes`` in one batch and wait (bounded) until Route 53 has them INSYNC."""
    route53 = ctx.aws.client("route53")
    answer = call(action, route53.change_resource_record_sets, HostedZoneId=zone_id,
                  ChangeBatch={"Comment": f"helios-aws {ctx.deployment.name}",
                               "Changes": changes})
    ctx.aws.forget(("records", zone_id))
    wait(route53.get_waiter("resource_record_sets_changed"), f"see Route 53 {action}",
         timeout, delay=10, Id=answer["ChangeInfo"]["Id"])


class DNSStep(AWSStep):
    """An A record (UPSERT) pointing the domain at the Elastic IP."""

    name = "DNS record"
    state_key = "dns"

    def read(self, ctx):
        domain = ctx.deployment.domain
        zone = find_zone(ctx, domain)
        if zone is None:
            return {"zone": None, "a": None, "cname": None}
        ctx.facts["zone_name"] = zone["Name"]
        rrsets = record_sets(ctx, zone["Id"])
        return {"zone": zone, "a": find_record(rrsets, domain, "A"),
                "cname": find_record(rrsets, domain, "CNAME")}

    def plan(self, ctx, current):
        domain, zone = ctx.deployment.domain, current["zone"]
        if zone is None:
            raise no_zone_error(domain)
        if current["cname"]:
            raise ConfigError(f"{domain} is a CNAME in the zone {zone['Name']}; it cannot "
                              "also have the server's A record.",
                              "Delete that CNAME record (Route 53 console or CLI) and run "
                              "the command again.")
        ip = ctx.facts.get("host")
        target = ip or "the Elastic IP"
        a = current["a"]
        if a is None:
            return Change(CREATE, f"A {domain} -> {target} (zone {zone['Name']})")
        now = values(a) or [f"alias {a.get('AliasTarget', {}).get('DNSName')}"]
        if a.get("AliasTarget") or now != [ip]:
            return Change(UPDATE, f"A {domain}: {', '.join(now)} -> {target}")
        return self.kept_or_adopted(self.record(ctx).get("value") == ip, f"A {domain} -> {ip}")

    def apply(self, ctx, current, change):
        zone, ip = current["zone"], ctx.facts["host"]
        record = {"zone_id": zone["Id"], "name": fqdn(ctx.deployment.domain), "value": ip}
        if change.action == ADOPT:
            return self.adopt(ctx, **record)
        change_records(ctx, zone["Id"], [{"Action": "UPSERT", "ResourceRecordSet": {
            "Name": record["name"], "Type": "A", "TTL": A_TTL,
            "ResourceRecords": [{"Value": ip}]}}], f"point {ctx.deployment.domain} at {ip}")
        self.save_record(ctx, **record)
        return CREATED if change.action == CREATE else UPDATED

    def cost_lines(self, ctx):
        zone = ctx.facts.get("zone_name", "of the domain").rstrip(".")
        return [(f"Route 53 hosted zone {zone} (already there)", pricing.HOSTED_ZONE_MONTH)]

    def _ours(self, ctx, current):
        """The A record, when it points where this deployment pointed it."""
        a = current["a"]
        ours = {self.record(ctx).get("value"), ctx.facts.get("host")} - {None}
        return a if a and set(values(a)) & ours else None

    def teardown(self, ctx, current):
        a = self._ours(ctx, current)
        return [f"DNS record A {ctx.deployment.domain} -> {', '.join(values(a))}"] if a else []

    def destroy(self, ctx, current):
        a = self._ours(ctx, current)
        if a:
            change_records(ctx, current["zone"]["Id"],
                           [{"Action": "DELETE", "ResourceRecordSet": a}],
                           f"delete the A record of {ctx.deployment.domain}")
        ctx.state.set(self.state_key, None)
        return [f"deleted A {ctx.deployment.domain}"] if a else []
