"""Backup probes: is there a recent backup, has a drill restored one lately, is the bucket
still protected, and can the server erase the history. Read from S3 and IAM with the
operator's credentials, the bucket found by its tag (as aws_provision finds it).

Ages are S3's own: when S3 stored a backup's manifest (its version's ``LastModified``),
never a date the server wrote into a name or a manifest."""

import datetime
import types

from ..aws import account, policies
from ..aws import identity as identity_mod
from ..aws import backups as bucket_mod
from ..aws.base import iam_name
from ..aws.session import call, translate
from ..backup import Config, describe_age, list_backups, list_drills, now
from .aws import session
from .base import Skip, failed, passed, probe, warned

MAX_BACKUP_AGE = datetime.timedelta(hours=26)
MAX_DRILL_AGE = datetime.timedelta(days=8)
SHOWN_ACTIONS = 8
PROTECTIONS = ("encryption", "versioning", "public_access", "policy")


def _find(ctx):
    view = session(ctx)
    recorded = (ctx.state.get("backups") or {}).get("bucket")
    name = bucket_mod.find_bucket(view.aws, ctx.deployment, recorded)
    if name is None:
        raise Skip(f"No backup bucket is tagged for deployment {ctx.deployment.name} in "
                   f"{ctx.deployment.region}: run aws_provision first.")
    return Config(bucket=name, prefix=ctx.deployment.name, region=ctx.deployment.region)


def bucket(ctx):
    return ctx.once("backup-bucket", lambda: _find(ctx))


def _created_at(ctx, name):
    listed = call("list the account's S3 buckets", _s3(ctx).list_buckets)["Buckets"]
    return next((b["CreationDate"] for b in listed if b["Name"] == name), None)


def _settings(ctx):
    """The bucket's protective settings, read once per run for every probe."""
    return ctx.once("backup-bucket-settings",
                    lambda: bucket_mod.read_settings(_s3(ctx), bucket(ctx).bucket))


def _s3(ctx):
    return session(ctx).aws.client("s3")


@probe("aws.E020", "A backup is less than 26 hours old",
       "Look at the timer on the server (systemctl status helios-backup.service, "
       "journalctl -u helios-backup.service), or run aws_backup now.")
def recent_backup(ctx):
    config = bucket(ctx)
    found = list_backups(config, _s3(ctx))
    if not found:
        made = _created_at(ctx, config.bucket)
        if made is not None and now() - made < MAX_BACKUP_AGE:
            # A new deployment: the nightly timer has not had its first night yet.
            return warned(f"There is no backup in s3://{config.bucket}/{config.prefix}/ yet; "
                          f"the bucket is {describe_age(now() - made)} old.")
        return failed(f"There is no complete backup in s3://{config.bucket}/{config.prefix}/.")
    newest = found[0]
    age = now() - newest["uploaded_at"]
    message = f"The newest backup, {newest['folder']}, is {describe_age(age)} old"
    if newest["created_at"] - newest["uploaded_at"] > datetime.timedelta(hours=1):
        message += (" by S3's clock, though its name claims "
                    f"{newest['created_at']:%Y-%m-%d %H:%M} UTC")
    if age > MAX_BACKUP_AGE:
        return failed(message + ".")
    return passed(message + ".")


@probe("aws.W020", "A restore drill passed in the last 8 days",
       "Run aws_restore --drill (it restores the newest backup into a scratch database "
       "and compares it with its manifest).")
def recent_drill(ctx):
    config = bucket(ctx)
    drills = list_drills(config, _s3(ctx))
    good = [d for d in drills if d.get("passed")]
    if not good:
        last = f" The last one failed: {drills[0].get('error')}" if drills else ""
        return failed("No restore drill has passed yet." + last)
    when = datetime.datetime.strptime(good[0]["finished_at"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc)
    age = now() - when
    message = f"The last passing drill restored {good[0]['backup']} {describe_age(age)} ago."
    return failed(message) if age > MAX_DRILL_AGE else passed(message)


def _caller(ctx):
    view = session(ctx)
    return ctx.once("caller", lambda: account.caller(view))


@probe("aws.E021", "The backup bucket is encrypted, versioned, private and TLS-only",
       "Run aws_provision: it puts the bucket's settings back (and its bucket policy, "
       "which grants nobody anything).")
def bucket_protected(ctx):
    config = bucket(ctx)
    identity = _caller(ctx)
    settings = _settings(ctx)
    wrong = bucket_mod.drift(settings, ctx.deployment, config.bucket, identity["partition"])
    if "policy" in wrong and settings["policy"] and bucket_mod.tls_only(
            settings["policy"], config.bucket, identity["partition"]):
        del wrong["policy"]  # changed, but still TLS-only: judged by what it grants below
    missing = [wrong[k] for k in PROTECTIONS if k in wrong]
    grants = bucket_mod.foreign_grants(settings["policy"], identity["account"])
    if grants:
        missing.append("the bucket policy lets other accounts in: " + "; ".join(grants))
    if missing:
        return failed(f"s3://{config.bucket}: " + "; ".join(missing) + ".")
    return passed(f"s3://{config.bucket}: SSE {', '.join(settings['encryption'])}, "
                  "versioning on, public access blocked, TLS only, no other account let in.")


def _role_policies(iam, role):
    """Every policy document of ``role``: inline and attached."""
    documents = []
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        documents.append((name, iam.get_role_policy(RoleName=role,
                                                    PolicyName=name)["PolicyDocument"]))
    for attached in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
        policy = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
        version = iam.get_policy_version(PolicyArn=attached["PolicyArn"],
                                         VersionId=policy["DefaultVersionId"])
        documents.append((attached["PolicyName"], version["PolicyVersion"]["Document"]))
    return documents


def role_documents(ctx):
    """(role name, [(policy name, document)]) of the deployment's instance role, read once
    per run for every probe that judges them; Skip when there is no role."""
    def read():
        view = session(ctx)
        role = iam_name(view)
        iam = view.aws.client("iam")
        if call("read the instance role", iam.get_role, missing=("NoSuchEntity",),
                RoleName=role) is None:
            raise Skip(f"There is no instance role {role} (--ses-credentials keys, or not "
                       "provisioned yet).")
        with translate(f"read the policies of role {role}"):
            return role, _role_policies(iam, role)

    return ctx.once("role-documents", read)


@probe("aws.E022", "The instance role cannot delete backups",
       "Remove the deleting actions from the role's policies (aws_provision manages only "
       "helios-ses-send and helios-backup-write): an attacker on the server could erase "
       "the history.")
def role_cannot_delete(ctx):
    role, documents = role_documents(ctx)
    config = bucket(ctx)
    partition = _caller(ctx)["partition"]
    harmful = bucket_mod.harmful_actions([d for _, d in documents], config.bucket,
                                         config.prefix, partition)
    if harmful:
        granting = [name for name, document in documents if bucket_mod.harmful_actions(
            [document], config.bucket, config.prefix, partition)]
        shown = ", ".join(harmful[:SHOWN_ACTIONS]) + (
            f" and {len(harmful) - SHOWN_ACTIONS} more" if len(harmful) > SHOWN_ACTIONS
            else "")
        return failed(f"Role {role} may {shown} on s3://{config.bucket} (granted by "
                      f"{', '.join(granting) or 'the policies together'}).")
    return passed(f"Role {role} may write and read backups, not delete them.")


def _actions(document, effect="Allow"):
    return {a for s in policies.statements(document) if s.get("Effect", "Allow") == effect
            for a in policies.as_list(
                s.get("Action") or [f"all but {x}" for x in policies.as_list(s.get("NotAction"))])}


@probe("aws.E023", "The instance role's policies are the ones aws_provision writes",
       "Run aws_provision: it writes the role's policies back (and remove by hand any "
       "policy it does not manage).")
def role_policies_as_written(ctx):
    view = session(ctx)
    role, documents = role_documents(ctx)
    found = dict(documents)
    identity = _caller(ctx)
    facts = types.SimpleNamespace(
        aws=view.aws, deployment=ctx.deployment,
        facts={"account": identity["account"], "partition": identity["partition"]})
    wanted = {identity_mod.POLICY_NAME: identity_mod.send_policy(facts),
              bucket_mod.ROLE_POLICY_NAME: bucket_mod.role_policy(
                  ctx.deployment, bucket(ctx).bucket, identity["partition"])}
    problems = []
    for name, document in wanted.items():
        have = found.get(name)
        if have is None:
            problems.append(f"{name} is missing (it allows {', '.join(sorted(_actions(document)))})")
            continue
        added = sorted(_actions(have) - _actions(document))
        removed = sorted(_actions(document) - _actions(have))
        unrefused = sorted(_actions(document, "Deny") - _actions(have, "Deny"))
        if added:
            problems.append(f"{name} also allows {', '.join(added)}")
        if removed:
            problems.append(f"{name} no longer allows {', '.join(removed)}")
        if unrefused:
            problems.append(f"{name} no longer refuses {', '.join(unrefused)}")
        if not added and not removed and not unrefused and \
                not identity_mod.same_policy(have, document):
            problems.append(f"{name} has other resources or conditions")
    for name in sorted(set(found) - set(wanted)):
        problems.append(f"{name}, which aws_provision does not write, allows "
                        f"{', '.join(sorted(_actions(found[name])))}")
    if problems:
        return failed(f"Role {role}: " + "; ".join(problems) + ".")
    return passed(f"Role {role} has exactly the policies aws_provision writes: "
                  f"{', '.join(sorted(wanted))}.")


@probe("aws.E024", "No backup in the bucket was overwritten",
       "Treat it as an incident: something wrote over a backup (a taken-over server can). "
       "The earlier versions are kept. A restore reads the versions its manifest names; "
       "when a manifest.json was written over, restore with aws_restore --backup FOLDER "
       "--object-version FIRST (the first version named above). Look at the server's logs "
       "for who wrote the later one.")
def no_overwritten_backup(ctx):
    config = bucket(ctx)
    versions = {}
    pages = _s3(ctx).get_paginator("list_object_versions").paginate(
        Bucket=config.bucket, Prefix=config.prefix + "/")
    with translate(f"list the versions in s3://{config.bucket}/{config.prefix}/"):
        for page in pages:
            for version in page.get("Versions", []):
                versions.setdefault(version["Key"], []).append(version)
    # A key is written once; expiry adds a delete marker, never a second version.
    overwritten = sorted(key for key, found in versions.items() if len(found) > 1)
    if overwritten:
        shown = ", ".join(f"{key} ({len(versions[key])} versions, the first "
                          f"{_first(versions[key])['VersionId']})"
                          for key in overwritten[:SHOWN_ACTIONS])
        more = len(overwritten) - SHOWN_ACTIONS
        return failed(f"{len(overwritten)} backup object(s) in s3://{config.bucket} were "
                      f"written more than once: {shown}" + (f" and {more} more" if more > 0
                                                             else "") + ".")
    return passed(f"Each of the {len(versions)} objects under s3://{config.bucket}/"
                  f"{config.prefix}/ was written once.")


def _first(versions):
    return min(versions, key=lambda v: v["LastModified"])


@probe("aws.E025", "The backup bucket locks every backup for --backup-days",
       "Run aws_provision: it turns S3 Object Lock on (in place) with the deployment's "
       "retention and mode.")
def backups_locked(ctx):
    config = bucket(ctx)
    d = ctx.deployment
    wrong = bucket_mod.drift(_settings(ctx), d, config.bucket, _caller(ctx)["partition"])
    if "object_lock" in wrong:
        return failed(f"s3://{config.bucket}: {wrong['object_lock']}.")
    return passed(f"s3://{config.bucket}: each new backup version is locked for "
                  f"{d.backup_days} days ({d.backup_lock} mode).")
