"""Step 9: SES. The mail domain as an identity with Easy DKIM, its DNS records (three
DKIM CNAMEs, SPF and DMARC TXT) in the domain's hosted zone, the sender address as an
identity, and the account's sandbox status and quota with what to do about them.

Records the domain already has are respected: an SPF record of its own is never
rewritten (one name may hold only one SPF policy) and an existing DMARC policy is kept.
Only what this tool wrote is removed by ``--destroy``.
"""

import botocore.exceptions

from ..engine import ADOPT, CREATE, CREATED, UPDATE, UPDATED, Change
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
        return "SES sandbox status: unknown"
    quota = account.get("SendQuota") or {}
    limits = (f"{quota.get('Max24HourSend', 0):.0f} messages a day, "
              f"{quota.get('MaxSendRate', 0):.0f} a second, "
              f"{quota.get('SentLast24Hours', 0):.0f} sent in the last 24 hours")
    if account.get("SendingEnabled") is False:
        note(ctx, f"Sending is disabled for the SES account in {region}: read the notices "
                  "in the SES console (reputation dashboard) before an election.")
    if account.get("ProductionAccessEnabled"):
        return f"SES production access in {region}: {limits}"
    note(ctx, f"SES in {region} is in the sandbox: mail goes only to verified addresses, "
              f"{limits}. Voters get no mail until AWS grants production access: "
              f"aws sesv2 put-account-details --region {region} --production-access-enabled "
              f"--mail-type TRANSACTIONAL --website-url {ctx.deployment.url} "
              "--use-case-description 'Election mail from a Helios voting server' "
              "(or in the SES console: Get set up, Request production access).")
    return f"SES sandbox in {region}: {limits}"


def dkim_records(domain, tokens):
    return [(fqdn(f"{token}._domainkey.{domain}"), f"{token}.dkim.amazonses.com")
            for token in tokens]


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
            "tokens": tokens,
            "zone": zone,
            "rrsets": record_sets(ctx, zone["Id"]) if zone else [],
            "account": sending_account(ctx),
        }

    def _record_changes(self, ctx, current, tokens):
        """[(description, Route 53 change, what was written)] the zone still needs."""
        domain, rrsets = current["domain"], current["rrsets"]
        changes = []
        for name, target in dkim_records(domain, tokens or ()):
            existing = [v.rstrip(".").lower() for v in values(find_record(rrsets, name, "CNAME"))]
            if existing != [target]:
                changes.append((f"DKIM CNAME {name} -> {target}",
                                {"Name": name, "Type": "CNAME", "TTL": DKIM_TTL,
                                 "ResourceRecords": [{"Value": target}]},
                                {"name": name, "type": "CNAME", "value": target}))
        txt = find_record(rrsets, domain, "TXT")
        spf = [txt_text(v) for v in values(txt) if txt_text(v).startswith("v=spf1")]
        if not spf:
            kept = [{"Value": v} for v in values(txt)]
            changes.append((f"SPF TXT {fqdn(domain)} \"{SPF}\"",
                            {"Name": fqdn(domain), "Type": "TXT",
                             "TTL": (txt or {}).get("TTL", TXT_TTL),
                             "ResourceRecords": kept + [{"Value": f'"{SPF}"'}]},
                            {"name": fqdn(domain), "type": "TXT", "value": SPF}))
        elif not any("include:amazonses.com" in s for s in spf):
            note(ctx, f"{domain} has its own SPF record without include:amazonses.com; it "
                      "was left as it is. SES mail passes DMARC through DKIM; add the "
                      "include if you later set a custom MAIL FROM domain.")
        dmarc_name = fqdn(f"_dmarc.{domain}")
        if find_record(rrsets, dmarc_name, "TXT") is None:
            changes.append((f"DMARC TXT {dmarc_name} \"{DMARC}\"",
                            {"Name": dmarc_name, "Type": "TXT", "TTL": TXT_TTL,
                             "ResourceRecords": [{"Value": f'"{DMARC}"'}]},
                            {"name": dmarc_name, "type": "TXT", "value": DMARC}))
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
        if domain not in verification:
            call(f"add the SES domain identity {domain}", ses.verify_domain_identity,
                 Domain=domain)
            record["created_identities"].append(domain)
        if domain not in verification or not tokens:
            tokens = call(f"turn on Easy DKIM for {domain}", ses.verify_domain_dkim,
                          Domain=domain)["DkimTokens"]
        record["dkim_tokens"] = tokens
        self.save_record(ctx, **record)
        if email not in verification:
            call(f"add the SES sender address {email}", ses.verify_email_identity,
                 EmailAddress=email)
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
                record["records"] = [r for r in record["records"] if r not in written] + written
                self.save_record(ctx, **record)
        return CREATED if change.action == CREATE else UPDATED

    def _removals(self, ctx, current):
        """[(description, Route 53 change)] taking out the records this tool wrote."""
        rrsets, removals = current["rrsets"], []
        for written in self.record(ctx).get("records", []):
            rrset = find_record(rrsets, written["name"], written["type"])
            if rrset is None:
                continue
            if written["type"] == "CNAME":
                mine = [v.rstrip(".").lower() for v in values(rrset)] == [written["value"]]
                rest = []
            else:
                mine = any(txt_text(v) == written["value"] for v in values(rrset))
                rest = [v for v in values(rrset) if txt_text(v) != written["value"]]
            if not mine:
                continue
            text = f"{written['type']} {written['name']} \"{written['value']}\""
            if rest:
                kept = dict(rrset, ResourceRecords=[{"Value": v} for v in rest])
                removals.append((text, {"Action": "UPSERT", "ResourceRecordSet": kept}))
            else:
                removals.append((text, {"Action": "DELETE", "ResourceRecordSet": rrset}))
        return removals

    def teardown(self, ctx, current):
        lines = [f"DNS record {text}" for text, _ in self._removals(ctx, current)]
        lines += [f"SES identity {identity}"
                  for identity in self.record(ctx).get("created_identities", [])
                  if identity in current["verification"]]
        return lines

    def destroy(self, ctx, current):
        done = []
        removals = self._removals(ctx, current)
        if removals:
            change_records(ctx, current["zone"]["Id"], [change for _, change in removals],
                           f"delete the mail records of {current['domain']}")
            done += [f"deleted {text}" for text, _ in removals]
        ses = ctx.aws.client("ses")
        for identity in self.record(ctx).get("created_identities", []):
            if identity in current["verification"]:
                call(f"delete the SES identity {identity}", ses.delete_identity,
                     Identity=identity)
                done.append(f"deleted SES identity {identity}")
        ctx.state.set(self.state_key, None)
        return done
