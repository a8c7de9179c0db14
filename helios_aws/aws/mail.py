"""Step 9: SES. The mail domain as an identity with Easy DKIM, its DNS records (three
DKIM CNAMEs, SPF and DMARC TXT) in the domain's hosted zone, the sender address as an
identity, and the account's sandbox status and quota with what to do about them.

Records the domain already has are respected: an SPF record of its own is never
rewritten (one name may hold only one SPF policy) and an existing DMARC policy is kept.
Only what this tool wrote is removed by ``--destroy``.

Several deployments of one account may send from one mail domain (``vote.example.org``
and ``board.example.org`` both mailing from ``example.org``), so the identities and their
records are shared, and who uses them is recorded in AWS, not in one deployment's state
file (which may be lost): each SES identity carries tags (sesv2 ``TagResource``)

* ``helios-aws:user:NAME``, one per deployment that sends as it;
* ``helios-aws:origin = created`` when helios-aws made it (an identity that was there
  before is never deleted);
* ``helios-aws:records``, on the domain identity: which of its DKIM, SPF and DMARC
  records helios-aws wrote.

Route 53 records carry no tags, but every record this step writes exists for the domain
identity, so the identity's tags are their ownership too: one place, read with the
identity, found again from AWS alone. ``--destroy`` takes away its own user tag, and
deletes an identity and the records helios-aws wrote only when no other deployment uses
it; it says what it keeps and for whom.
"""

import botocore.exceptions

from ..engine import ADOPT, CREATE, CREATED, UPDATE, UPDATED, Change
from ..errors import AWSError
from . import sending
from .base import AWSStep, note
from .dns import (change_records, find_record, find_zone, fqdn, record_sets, txt_text,
                  values)
from .identity import mail_identities
from .session import call, error_code

DKIM_TTL = 1800
TXT_TTL = 300
SPF = "v=spf1 include:amazonses.com ~all"
# Monitoring only: a stricter policy could reject mail that other services send for
# the domain; the owner tightens it once reports show all mail is signed.
DMARC = "v=DMARC1; p=none;"
USER_TAG = "helios-aws:user:"
ORIGIN_TAG = "helios-aws:origin"
RECORDS_TAG = "helios-aws:records"
ORIGIN_CREATED = "created"  # the ORIGIN_TAG of an identity this tool made


def sending_account(ctx):
    """The SES account in the region (sesv2 GetAccount), or {"unknown": why}."""
    def fetch():
        sesv2 = ctx.aws.client("sesv2")
        try:
            return sesv2.get_account()
        except botocore.exceptions.ClientError as exc:
            message = exc.response.get("Error", {}).get("Message", "")
            if message and not message.lstrip().startswith("<"):
                return {"unknown": f"{error_code(exc)}: {message.splitlines()[0][:160]}"}
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return {"unknown": f"HTTP {status}"}
        except botocore.exceptions.BotoCoreError as exc:
            return {"unknown": str(exc)[:160]}

    return ctx.aws.cached("ses_account", fetch)


def account_report(ctx, account):
    """One line on the account, plus a note when the operator has something to do."""
    region = ctx.aws.region
    if "unknown" in account:
        note(ctx, f"Whether SES in {region} is still in the sandbox is unknown (GetAccount "
                  f"answered {account['unknown']}). Look at the SES console's account "
                  "dashboard: in the sandbox, mail reaches only verified addresses.")
        return f"SES sandbox status: unknown{reputation_report(ctx)}"
    quota = account.get("SendQuota") or {}
    limits = (f"{quota.get('Max24HourSend', 0):.0f} messages a day, "
              f"{quota.get('MaxSendRate', 0):.0f} a second, "
              f"{quota.get('SentLast24Hours', 0):.0f} sent in the last 24 hours")
    if account.get("SendingEnabled") is False:
        note(ctx, f"Sending is disabled for the SES account in {region}: read the notices "
                  "in the SES console (reputation dashboard) before an election.")
    if account.get("ProductionAccessEnabled"):
        return f"SES production access in {region}: {limits}{reputation_report(ctx)}"
    note(ctx, f"SES in {region} is in the sandbox: mail goes only to verified addresses, "
              f"{limits}. Voters get no mail until AWS grants production access: "
              "aws_provision --request-production-access --use-case TEXT files the "
              "request (or in the SES console: Get set up, Request production access).")
    return f"SES sandbox in {region}: {limits}{reputation_report(ctx)}"


def reputation_report(ctx):
    """"; bounce rate ..., complaint rate ..." for the plan's account line, with a note for
    each rate at or above AWS's review threshold."""
    try:
        rates = sending.reputation(ctx.aws)
    except AWSError as exc:
        return f"; bounce and complaint rates unknown ({exc.message})"
    for problem in sending.rate_problems(rates):
        note(ctx, f"SES in {ctx.aws.region}: {problem}. Remove the addresses that bounce "
                  "or complain (aws_check lists them) before mailing voters.")
    return f"; {sending.rates_text(rates)}"


def identity_arn(ctx, identity):
    return (f"arn:{ctx.facts['partition']}:ses:{ctx.aws.region}:{ctx.facts['account']}"
            f":identity/{identity}")


def identity_tags(ctx, identity):
    """The tags of an SES identity, read once a run ({} when it has none)."""
    sesv2 = ctx.aws.client("sesv2")
    answer = ctx.aws.cached(("ses_tags", identity), lambda: call(
        f"read the tags of the SES identity {identity}", sesv2.list_tags_for_resource,
        missing=("NotFoundException",), ResourceArn=identity_arn(ctx, identity)))
    return {tag["Key"]: tag["Value"] for tag in (answer or {}).get("Tags", [])}


def tag_identity(ctx, identity, tags):
    call(f"record the users of the SES identity {identity}",
         ctx.aws.client("sesv2").tag_resource, ResourceArn=identity_arn(ctx, identity),
         Tags=[{"Key": key, "Value": value} for key, value in tags.items()])
    ctx.aws.forget(("ses_tags", identity))


def untag_identity(ctx, identity, keys):
    call(f"remove {ctx.deployment.name} from the users of the SES identity {identity}",
         ctx.aws.client("sesv2").untag_resource, ResourceArn=identity_arn(ctx, identity),
         TagKeys=list(keys))
    ctx.aws.forget(("ses_tags", identity))


def users(tags):
    return sorted(key[len(USER_TAG):] for key in tags if key.startswith(USER_TAG))


def record_kinds(tags):
    return set((tags.get(RECORDS_TAG) or "").split())


def dkim_records(domain, tokens):
    return [(fqdn(f"{token}._domainkey.{domain}"), f"{token}.dkim.amazonses.com")
            for token in tokens]


def mail_records(domain, tokens):
    """The records this step writes for ``domain``: its DKIM CNAMEs (for the identity's
    ``tokens``), SPF and DMARC, as {name, type, value, kind}."""
    return [{"name": name, "type": "CNAME", "value": target, "kind": "dkim"}
            for name, target in dkim_records(domain, tokens or ())] + [
        {"name": fqdn(domain), "type": "TXT", "value": SPF, "kind": "spf"},
        {"name": fqdn(f"_dmarc.{domain}"), "type": "TXT", "value": DMARC, "kind": "dmarc"}]


class MailStep(AWSStep):
    name = "mail (SES)"
    state_key = "ses"

    def read(self, ctx):
        domain, email = mail_identities(ctx.deployment)
        ses = ctx.aws.client("ses")
        verification = ctx.aws.cached("ses_verification", lambda: call(
            "read the SES identities", ses.get_identity_verification_attributes,
            Identities=[domain, email])["VerificationAttributes"])
        record = self.record(ctx)
        tokens = None
        if domain in verification:
            tokens = record.get("dkim_tokens") if record.get("domain") == domain else None
            if not tokens:
                attributes = ctx.aws.cached(("dkim", domain), lambda: call(
                    "read the domain's DKIM tokens", ses.get_identity_dkim_attributes,
                    Identities=[domain])["DkimAttributes"])
                tokens = attributes.get(domain, {}).get("DkimTokens") or None
        zone = find_zone(ctx, domain)
        return {
            "domain": domain,
            "email": email,
            "verification": verification,
            "tags": {identity: self._tags(ctx, identity, record, domain)
                     for identity in (domain, email) if identity in verification},
            "tokens": tokens,
            "zone": zone,
            "rrsets": record_sets(ctx, zone["Id"]) if zone else [],
            "account": sending_account(ctx),
        }

    def _record_changes(self, ctx, current, tokens):
        """[(description, Route 53 change, what was written)] the zone still needs."""
        domain, rrsets = current["domain"], current["rrsets"]
        changes = []
        for item in mail_records(domain, tokens):
            name, value = item["name"], item["value"]
            rrset = find_record(rrsets, name, item["type"])
            if item["kind"] == "dkim":
                if [v.rstrip(".").lower() for v in values(rrset)] != [value]:
                    changes.append((f"DKIM CNAME {name} -> {value}",
                                    {"Name": name, "Type": "CNAME", "TTL": DKIM_TTL,
                                     "ResourceRecords": [{"Value": value}]}, item))
            elif item["kind"] == "spf":
                spf = [txt_text(v) for v in values(rrset) if txt_text(v).startswith("v=spf1")]
                if not spf:
                    kept = [{"Value": v} for v in values(rrset)]
                    changes.append((f"SPF TXT {name} \"{value}\"",
                                    {"Name": name, "Type": "TXT",
                                     "TTL": (rrset or {}).get("TTL", TXT_TTL),
                                     "ResourceRecords": kept + [{"Value": f'"{value}"'}]},
                                    item))
                elif not any("include:amazonses.com" in s for s in spf):
                    note(ctx, f"{domain} has its own SPF record without "
                              "include:amazonses.com; it was left as it is. SES mail passes "
                              "DMARC through DKIM; add the include if you later set a custom "
                              "MAIL FROM domain.")
            elif rrset is None:
                changes.append((f"DMARC TXT {name} \"{value}\"",
                                {"Name": name, "Type": "TXT", "TTL": TXT_TTL,
                                 "ResourceRecords": [{"Value": f'"{value}"'}]}, item))
        return changes

    def _status_notes(self, ctx, current):
        for identity, attributes in current["verification"].items():
            status = attributes.get("VerificationStatus")
            if status == "Success":
                continue
            if identity == current["email"]:
                note(ctx, f"SES has not verified {identity} yet ({status}): click the link "
                          "AWS mailed to it. Until then Helios cannot send as it.")
            else:
                note(ctx, f"SES has not verified the domain {identity} yet ({status}): AWS "
                          "checks the DKIM records, which can take up to 72 hours.")

    def plan(self, ctx, current):
        domain, email, verification = current["domain"], current["email"], current["verification"]
        details = []
        if domain not in verification:
            details.append(f"SES domain identity {domain} with Easy DKIM")
        if email not in verification:
            details.append(f"SES sender address {email} (AWS mails it a confirmation link)")
        details.extend(f"deployment {ctx.deployment.name} recorded as a user of the SES "
                       f"identity {identity}" for identity in self._untagged(ctx, current))
        if current["zone"] is None:
            note(ctx, f"No Route 53 zone holds {domain}: add its three DKIM CNAME records "
                      "(SES console, Identities) at your DNS provider, or mail will not be "
                      "DKIM-signed and may land in spam.")
        else:
            if current["tokens"] is None:
                details.append(f"3 DKIM CNAME records under _domainkey.{domain}")
            details.extend(text for text, _, _ in
                           self._record_changes(ctx, current, current["tokens"]))
        self._status_notes(ctx, current)
        report = account_report(ctx, current["account"])
        if details:
            nothing_yet = not verification and not self.record(ctx)
            return Change(CREATE if nothing_yet else UPDATE, *details, report)
        return self.kept_or_adopted(self.record(ctx).get("domain") == domain,
                                    f"{domain} (DKIM) and {email} verified in SES", report)

    def _tags(self, ctx, identity, record, domain):
        """The identity's tags. An identity that this run's state file records as naming
        the deployment among its users (``tagged``) is not asked again, except by
        --destroy, which must know every other user: a no-op run reads each thing once."""
        if (record.get("domain") == domain and identity in (record.get("tagged") or ())
                and not ctx.facts.get("destroying")):
            return {USER_TAG + ctx.deployment.name: ctx.deployment.domain}
        return identity_tags(ctx, identity)

    def _untagged(self, ctx, current):
        """The deployment's existing identities that do not name it as a user yet."""
        return [identity for identity, tags in current["tags"].items()
                if ctx.deployment.name not in users(tags)]

    def apply(self, ctx, current, change):
        domain, email, verification = current["domain"], current["email"], current["verification"]
        record = dict(self.record(ctx))
        if record.get("domain") != domain:
            record = {"domain": domain, "created_identities": [], "records": []}
        tokens = current["tokens"]
        if change.action == ADOPT:
            record["dkim_tokens"] = tokens
            return self.adopt(ctx, **record)
        ses = ctx.aws.client("ses")
        ctx.aws.forget("ses_verification")
        me = {USER_TAG + ctx.deployment.name: ctx.deployment.domain}
        for identity in self._untagged(ctx, current):
            tag_identity(ctx, identity, me)
        if domain not in verification:
            call(f"add the SES domain identity {domain}", ses.verify_domain_identity,
                 Domain=domain)
            # A deleted identity's tags may outlive it: the new one gets its own afresh.
            tag_identity(ctx, domain, {**me, ORIGIN_TAG: ORIGIN_CREATED, RECORDS_TAG: ""})
            record["created_identities"].append(domain)
        if domain not in verification or not tokens:
            tokens = call(f"turn on Easy DKIM for {domain}", ses.verify_domain_dkim,
                          Domain=domain)["DkimTokens"]
        record["dkim_tokens"] = tokens
        self.save_record(ctx, **record)
        if email not in verification:
            call(f"add the SES sender address {email}", ses.verify_email_identity,
                 EmailAddress=email)
            tag_identity(ctx, email, {**me, ORIGIN_TAG: ORIGIN_CREATED})
            record["created_identities"].append(email)
            self.save_record(ctx, **record)
        if current["zone"] is not None:
            changes = self._record_changes(ctx, current, tokens)
            if changes:
                change_records(ctx, current["zone"]["Id"],
                               [{"Action": "UPSERT", "ResourceRecordSet": rrset}
                                for _, rrset, _ in changes],
                               f"write the mail records of {domain}")
                written = [w for _, _, w in changes]
                kinds = record_kinds(identity_tags(ctx, domain)) | {w["kind"] for w in written}
                tag_identity(ctx, domain, {RECORDS_TAG: " ".join(sorted(kinds))})
                record["records"] = [r for r in record["records"] if r not in written] + written
                self.save_record(ctx, **record)
        # Every identity now names the deployment as a user (see _tags).
        record["tagged"] = sorted({domain, email})
        self.save_record(ctx, **record)
        return CREATED if change.action == CREATE else UPDATED

    def _claims(self, ctx, current):
        """[(identity, the other deployments that use it, whether helios-aws made it, the
        kinds of mail records helios-aws wrote for it)] of the identities this deployment
        uses, from their tags (and, for a state file written before the tags, from it)."""
        record = self.record(ctx)
        mine = record if record.get("domain") == current["domain"] else {}
        created = mine.get("created_identities", [])
        legacy_kinds = {_kind(w) for w in mine.get("records", [])}
        name, claims = ctx.deployment.name, []
        for identity, tags in current["tags"].items():
            legacy = legacy_kinds if identity == current["domain"] else set()
            if name not in users(tags) and identity not in created and not legacy:
                continue
            kinds = record_kinds(tags) | legacy
            claims.append((identity, [u for u in users(tags) if u != name],
                           tags.get(ORIGIN_TAG) == ORIGIN_CREATED or identity in created,
                           kinds if identity == current["domain"] else set()))
        return claims

    def _removals(self, current, written):
        """[(description, Route 53 change)] taking the ``written`` records out."""
        rrsets, removals = current["rrsets"], []
        for item in written:
            rrset = find_record(rrsets, item["name"], item["type"])
            if rrset is None:
                continue
            if item["type"] == "CNAME":
                mine = [v.rstrip(".").lower() for v in values(rrset)] == [item["value"]]
                rest = []
            else:
                mine = any(txt_text(v) == item["value"] for v in values(rrset))
                rest = [v for v in values(rrset) if txt_text(v) != item["value"]]
            if not mine:
                continue
            text = f"{item['type']} {item['name']} \"{item['value']}\""
            if rest:
                kept = dict(rrset, ResourceRecords=[{"Value": v} for v in rest])
                removals.append((text, {"Action": "UPSERT", "ResourceRecordSet": kept}))
            else:
                removals.append((text, {"Action": "DELETE", "ResourceRecordSet": rrset}))
        return removals

    def _fates(self, ctx, current):
        """[(line, identity to delete or None, record removals)] of what --destroy does
        with each identity the deployment uses."""
        fates, name = [], ctx.deployment.name
        for identity, others, created, kinds in self._claims(ctx, current):
            records = "" if identity != current["domain"] else " and its mail records"
            if others:
                fates.append((f"deployment {name}'s claim on SES identity {identity} (the "
                              f"identity{records} stay: deployment {', '.join(others)} uses "
                              "it)", None, []))
                continue
            written = [r for r in mail_records(current["domain"], current["tokens"])
                       if r["kind"] in kinds]
            removals = self._removals(current, written) if current["zone"] else []
            if created:
                fates.append((f"SES identity {identity}", identity, removals))
            else:
                fates.append((f"deployment {name}'s claim on SES identity {identity} (the "
                              "identity stays: it was there before helios-aws)", None, removals))
        return fates

    def teardown(self, ctx, current):
        lines = []
        for line, _, removals in self._fates(ctx, current):
            lines += [f"DNS record {text}" for text, _ in removals] + [line]
        return lines

    def destroy(self, ctx, current):
        done, name = [], ctx.deployment.name
        ses = ctx.aws.client("ses")
        deleted = set()
        for line, identity, removals in self._fates(ctx, current):
            if removals:
                change_records(ctx, current["zone"]["Id"], [change for _, change in removals],
                               f"delete the mail records of {current['domain']}")
                done += [f"deleted {text}" for text, _ in removals]
            if identity:
                call(f"delete the SES identity {identity}", ses.delete_identity,
                     Identity=identity)
                done.append(f"deleted SES identity {identity}")
                deleted.add(identity)
            else:
                done.append(f"removed {line}")
        for identity, tags in current["tags"].items():
            if name in users(tags) and identity not in deleted:
                untag_identity(ctx, identity, [USER_TAG + name])
        ctx.state.set(self.state_key, None)
        return done


def _kind(written):
    """dkim, spf or dmarc: what a record written by an older version was for."""
    if written["type"] == "CNAME":
        return "dkim"
    return "dmarc" if written["name"].startswith("_dmarc.") else "spf"
