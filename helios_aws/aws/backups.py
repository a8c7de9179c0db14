"""Step 6: the backup bucket, and the instance role's right to write into it (only that).

One S3 bucket per deployment, tagged and adopted by its tag like every resource. Its
settings are checked on every run and put back when they drifted:

* default encryption SSE-S3 (AES-256). SSE-KMS with the AWS-managed key ``aws/s3`` would
  protect the data no better: any principal S3 lets read an object may use that key, so it
  adds no separation of duties, only KMS request charges and throttling on every part of a
  large upload. A customer-managed key would, but it costs $1/month and a key policy to
  keep right; SSE-S3 is the honest default.
* versioning on, so an overwritten backup is still there (as a non-current version);
* all four Block Public Access settings on;
* a bucket policy denying every request not made over TLS;
* a lifecycle rule: daily backups expire after ``backup_days`` (default 35); non-current
  versions after :data:`NONCURRENT_DAYS`; unfinished multipart uploads after 2 days.
* S3 Object Lock with a default retention of ``backup_days``, in governance mode (or
  compliance mode with ``--backup-lock compliance``): no version of a backup can be
  deleted or overwritten away before then, whatever the lifecycle or a caller says.
  A bucket made before the lock gets it in place (S3 allows that on a versioned bucket).

The instance role gets an inline policy allowing ``s3:PutObject`` under ``NAME/`` and the
reads the restore drill needs (``s3:GetObject`` there, ``s3:ListBucket`` with a prefix
condition), nothing else: no ``DeleteObject``, no bucket administration, so an attacker
on the server cannot erase the history. An explicit Deny (:data:`NEVER_ACTIONS`) keeps it
so even if another policy on the role grants more: the role can never shorten or bypass
a retention, nor change the bucket's lock, lifecycle, versioning or policy.
``--destroy`` keeps the bucket unless ``--delete-backups NAME`` is given.
"""

import hashlib
import json

import botocore.exceptions

from ..backup import Config, list_backups
from ..engine import ADOPT, CREATE, CREATED, UPDATE, UPDATED, Change
from ..errors import AWSError, ConfigError
from . import policies, pricing
from .base import AWSStep, iam_name, is_tagged, note
from .identity import same_policy
from .session import TAG_KEY, call, error_code, translate

NONCURRENT_DAYS = 30
ABORT_UPLOADS_DAYS = 2
ROLE_POLICY_NAME = "helios-backup-write"
ASSUMED_BACKUP_GIB = 1.0
# What the instance role may do; everything else (DeleteObject, DeleteObjectVersion,
# PutBucketPolicy, PutLifecycleConfiguration, ...) is denied by omission.
WRITE_ACTIONS = ["s3:PutObject", "s3:AbortMultipartUpload"]
READ_ACTIONS = ["s3:GetObject", "s3:GetObjectVersion"]
ENCRYPTION = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}
PUBLIC_ACCESS = {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                 "BlockPublicPolicy": True, "RestrictPublicBuckets": True}
# What the instance role is refused outright, whatever else allows it: everything that
# would let the server shorten, lift or outlive the history's protection.
NEVER_ACTIONS = [
    "s3:BypassGovernanceRetention", "s3:PutObjectRetention", "s3:PutObjectLegalHold",
    "s3:PutBucketObjectLockConfiguration", "s3:PutLifecycleConfiguration",
    "s3:PutBucketVersioning", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy",
    "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutEncryptionConfiguration",
    "s3:PutBucketPublicAccessBlock", "s3:DeleteBucket",
]
LOCK_MODES = {"governance": "GOVERNANCE", "compliance": "COMPLIANCE"}


def bucket_name(deployment, account):
    """Bucket names are global: the account and region make the deployment's unique
    (at most 7 + 40 + 8 + 8 = 63 characters, S3's limit)."""
    digest = hashlib.sha256(f"{account}:{deployment.region}".encode()).hexdigest()[:8]
    return f"helios-{deployment.name}-backup-{digest}"


def tls_policy(bucket, partition="aws"):
    arn = f"arn:{partition}:s3:::{bucket}"
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyWithoutTLS", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [arn, f"{arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }]}


def lifecycle(deployment):
    name = deployment.name
    return {"Rules": [
        {"ID": "helios-daily-backups", "Status": "Enabled",
         "Filter": {"Prefix": f"{name}/daily/"},
         "Expiration": {"Days": deployment.backup_days}},
        {"ID": "helios-old-versions", "Status": "Enabled", "Filter": {"Prefix": f"{name}/"},
         "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_DAYS},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_UPLOADS_DAYS}},
    ]}


def object_lock(deployment):
    """The bucket's Object Lock: every new version kept ``backup_days`` in the chosen mode."""
    return {"ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {
        "Mode": LOCK_MODES[deployment.backup_lock], "Days": deployment.backup_days}}}


def describe_lock(deployment):
    return (f"Object Lock: each backup kept {deployment.backup_days} days "
            f"({deployment.backup_lock})")


def role_policy(deployment, bucket, partition="aws"):
    arn = f"arn:{partition}:s3:::{bucket}"
    prefix = f"{deployment.name}/"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "WriteBackups", "Effect": "Allow", "Action": WRITE_ACTIONS,
         "Resource": [f"{arn}/{prefix}*"]},
        {"Sid": "ReadBackupsForDrills", "Effect": "Allow", "Action": READ_ACTIONS,
         "Resource": [f"{arn}/{prefix}*"]},
        {"Sid": "ListOwnPrefix", "Effect": "Allow", "Action": ["s3:ListBucket"],
         "Resource": [arn], "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}}},
        {"Sid": "NeverRewriteHistory", "Effect": "Deny", "Action": NEVER_ACTIONS,
         "Resource": [arn, f"{arn}/*"]},
    ]}


HARMFUL_LEVELS = ("Write", "Permissions management", "Tagging")


def harmful_actions(documents, bucket, prefix, partition="aws"):
    """The S3 actions ``documents`` (a principal's policies) allow on the bucket or its
    backups that could erase, overwrite protections of or hide them: every action on a
    bucket or an object of access level Write, Permissions management or Tagging in
    AWS's reference, except
    the uploads the backups themselves need (:data:`WRITE_ACTIONS`). Wildcards, NotAction,
    Deny and resources are read as IAM reads them (:mod:`.policies`)."""
    arn = f"arn:{partition}:s3:::{bucket}"
    targets = [arn, f"{arn}/{prefix}/daily/x"]
    granted = policies.allowed(documents, ["s3"], targets)
    needed = {a.lower() for a in WRITE_ACTIONS}
    return sorted(a for a in granted if a.lower() not in needed
                  and policies.access_level(a) in HARMFUL_LEVELS
                  and any(policies.acts_on(a, t) for t in targets))


def _normal_lifecycle(config):
    return sorted(json.dumps(rule, sort_keys=True) for rule in (config or {}).get("Rules", []))


def read_settings(s3, bucket):
    """The bucket's protective settings as S3 reports them (None where one is missing)."""
    encryption = call("read the bucket's encryption", s3.get_bucket_encryption,
                      missing=("ServerSideEncryptionConfigurationNotFoundError",),
                      Bucket=bucket)
    versioning = call("read the bucket's versioning", s3.get_bucket_versioning, Bucket=bucket)
    public = call("read the bucket's public access block", s3.get_public_access_block,
                  missing=("NoSuchPublicAccessBlockConfiguration",), Bucket=bucket)
    policy = call("read the bucket policy", s3.get_bucket_policy,
                  missing=("NoSuchBucketPolicy",), Bucket=bucket)
    rules = call("read the bucket's lifecycle", s3.get_bucket_lifecycle_configuration,
                 missing=("NoSuchLifecycleConfiguration",), Bucket=bucket)
    lock = call("read the bucket's Object Lock", s3.get_object_lock_configuration,
                missing=("ObjectLockConfigurationNotFoundError",), Bucket=bucket)
    return {
        "object_lock": lock["ObjectLockConfiguration"] if lock else None,
        "encryption": [r["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] for r in
                       encryption["ServerSideEncryptionConfiguration"]["Rules"]]
        if encryption else [],
        "versioning": versioning.get("Status") or "",
        "public_access": public["PublicAccessBlockConfiguration"] if public else {},
        "policy": json.loads(policy["Policy"]) if policy else None,
        "lifecycle": {"Rules": rules["Rules"]} if rules else None,
    }


def drift(settings, deployment, bucket, partition="aws"):
    """{setting: what is wrong} for each protective setting that is missing or differs."""
    wrong = {}
    if not set(settings["encryption"]) & {"AES256", "aws:kms", "aws:kms:dsse"}:
        wrong["encryption"] = "default encryption is off"
    if settings["versioning"] != "Enabled":
        wrong["versioning"] = f"versioning is {settings['versioning'] or 'off'}"
    off = [k for k in PUBLIC_ACCESS if not settings["public_access"].get(k)]
    if off:
        wrong["public_access"] = f"Block Public Access is off: {', '.join(off)}"
    if settings["policy"] is None or not tls_only(settings["policy"], bucket, partition):
        wrong["policy"] = "the bucket policy does not deny requests without TLS"
    elif not same_policy(settings["policy"], tls_policy(bucket, partition)):
        wrong["policy"] = "the bucket policy was changed"
    if _normal_lifecycle(settings["lifecycle"]) != _normal_lifecycle(lifecycle(deployment)):
        wrong["lifecycle"] = (f"the lifecycle is not: daily backups kept "
                              f"{deployment.backup_days} days, old versions "
                              f"{NONCURRENT_DAYS} days")
    if _normal_lock(settings.get("object_lock")) != _normal_lock(object_lock(deployment)):
        wrong["object_lock"] = (f"Object Lock is {_lock_text(settings.get('object_lock'))}, "
                                f"not {deployment.backup_days} days ({deployment.backup_lock})")
    return wrong


def _normal_lock(config):
    """(enabled, mode, days) of an Object Lock configuration (S3 may add "Years": 0)."""
    config = config or {}
    retention = (config.get("Rule") or {}).get("DefaultRetention") or {}
    days = (retention.get("Days") or 0) + 365 * (retention.get("Years") or 0)
    return (config.get("ObjectLockEnabled") == "Enabled", retention.get("Mode"), days)


def _lock_text(config):
    enabled, mode, days = _normal_lock(config)
    if not enabled:
        return "off"
    if not mode:
        return "on without a default retention"
    return f"{days} days ({mode.lower()})"


def tls_only(policy, bucket, partition="aws"):
    """Whether a bucket policy denies every S3 action, on the bucket and its objects, to
    everyone, without TLS (judged by what it denies, not by its spelling)."""
    arn = f"arn:{partition}:s3:::{bucket}"
    every = set(policies.service_actions("s3"))
    for statement in policies.statements(policy):
        condition = statement.get("Condition") or {}
        secure = {str(v).lower() for test in condition.values()
                  for key, values in test.items() if key.lower() == "aws:securetransport"
                  for v in (values if isinstance(values, list) else [values])}
        if (statement.get("Effect") == "Deny" and statement.get("Principal") in (
                "*", {"AWS": "*"}) and set(condition) <= {"Bool", "BoolIfExists"}
                and secure == {"false"}
                and policies.statement_actions(statement, ["s3"]) >= every
                and all(policies._resource_matches(statement, [r])
                        for r in (arn, f"{arn}/x"))):
            return True
    return False


def foreign_grants(policy, account):
    """"principal: actions" for each statement of a bucket policy that allows anyone
    outside ``account`` to do anything."""
    found = []
    for statement in policies.statements(policy):
        if statement.get("Effect") != "Allow":
            continue
        outsiders = policies.foreign_principals(statement, account)
        if outsiders:
            actions = policies.as_list(statement.get("Action")) or [
                "all but " + ", ".join(policies.as_list(statement.get("NotAction")))]
            found.append(f"{', '.join(outsiders)} may {', '.join(actions)}")
    return found


def find_bucket(aws, deployment, recorded=None):
    """The name of the deployment's bucket, found by its tag (the recorded name first),
    or None. Buckets of other deployments or owners are never touched. The recorded
    bucket is asked for its tags directly; the account's buckets are listed only when it
    is gone or no longer tagged."""
    s3 = aws.client("s3")
    if recorded:
        tags = call("read the bucket's tags", s3.get_bucket_tagging,
                    missing=("NoSuchTagSet", "NoSuchBucket", "AccessDenied"), Bucket=recorded)
        if tags and is_tagged(_View(aws, deployment), {"Tags": tags["TagSet"]}):
            return recorded
    names = [b["Name"] for b in call("list the S3 buckets", s3.list_buckets)["Buckets"]]
    candidates = sorted(n for n in names if n.startswith(f"helios-{deployment.name}-"))
    if recorded in names:
        candidates.insert(0, recorded)
    for name in candidates:
        tags = call("read the bucket's tags", s3.get_bucket_tagging,
                    missing=("NoSuchTagSet", "NoSuchBucket"), Bucket=name)
        if tags and is_tagged(_View(aws, deployment), {"Tags": tags["TagSet"]}):
            return name
    return None


def _untagged_owner(ctx, s3, name):
    """Who holds the bucket ``name``, which carries no deployment tag: "this account",
    "another account", or None when no bucket has that name."""
    listed = [b["Name"] for b in call("list the S3 buckets", s3.list_buckets)["Buckets"]]
    if name in listed:
        return "this account"
    with translate("look for the bucket"):
        try:
            s3.head_bucket(Bucket=name)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in ("404", "NoSuchBucket"):
                return None
            if error_code(exc) not in ("403", "Forbidden", "AccessDenied"):
                raise
    return "another account"


class _View:
    """What base.is_tagged reads from a context."""

    def __init__(self, aws, deployment):
        self.aws, self.deployment = aws, deployment


class BackupBucketStep(AWSStep):
    """The backup bucket with its protective settings, and the role's write policy."""

    name = "backup bucket (S3)"
    state_key = "backups"

    def read(self, ctx):
        s3 = ctx.aws.client("s3")
        want = bucket_name(ctx.deployment, ctx.facts["account"])
        found = ctx.aws.cached(("backup_bucket", ctx.deployment.name), lambda: find_bucket(
            ctx.aws, ctx.deployment, self.record(ctx).get("bucket")))
        squatted = None
        if found is None:
            squatted = _untagged_owner(ctx, s3, want)
        bucket = found or want
        ctx.facts["backup_bucket"] = bucket
        ctx.facts["backup_bucket_found"] = found
        policy = None
        if ctx.deployment.ses_credentials == "role":
            answer = ctx.aws.cached(("backup_role_policy", iam_name(ctx)), lambda: call(
                "read the role's backup policy", ctx.aws.client("iam").get_role_policy,
                missing=("NoSuchEntity",), RoleName=iam_name(ctx),
                PolicyName=ROLE_POLICY_NAME))
            policy = answer["PolicyDocument"] if answer else None
        return {"bucket": bucket, "exists": found is not None, "squatted": squatted,
                "settings": ctx.aws.cached(("bucket_settings", found),
                                           lambda: read_settings(s3, found))
                if found else None,
                "role_policy": policy}

    def wanted_policy(self, ctx, bucket):
        return role_policy(ctx.deployment, bucket, ctx.facts.get("partition", "aws"))

    def plan(self, ctx, current):
        d, bucket = ctx.deployment, current["bucket"]
        if current["squatted"] == "this account":
            # Its name holds this account's and region's digest: it is almost surely this
            # deployment's own bucket, with its backups, that lost its tag.
            raise AWSError(
                f"The S3 bucket {bucket} is in this account but has lost its "
                f"{TAG_KEY} tag; it may hold this deployment's backups: do not delete it.",
                f"Tag it again: aws s3api put-bucket-tagging --bucket {bucket} --tagging "
                f"'TagSet=[{{Key={TAG_KEY},Value={d.name}}},{{Key=Name,Value={bucket}}}]'"
                ", then run aws_provision again.")
        if current["squatted"]:
            raise AWSError(f"An S3 bucket named {bucket} exists in another account.",
                           "Give the deployment another --name.")
        role_details = []
        if d.ses_credentials != "role":
            note(ctx, "With --ses-credentials keys the server has no instance role, so it "
                      "cannot write backups to the bucket: use the default (role).")
        elif current["role_policy"] is None or not same_policy(
                current["role_policy"], self.wanted_policy(ctx, bucket)):
            role_details.append(f"role {iam_name(ctx)} may write backups under "
                                f"s3://{bucket}/{d.name}/ and read them back (no delete)")
        if not current["exists"]:
            return Change(CREATE, f"S3 bucket {bucket}: SSE-S3 encryption, versioning, public "
                                  "access blocked, TLS only, daily backups kept "
                                  f"{d.backup_days} days (old versions {NONCURRENT_DAYS})",
                          describe_lock(d), *role_details)
        wrong = drift(current["settings"], d, bucket, ctx.facts.get("partition", "aws"))
        details = [f"repair: {text}" for text in wrong.values()] + role_details
        if details:
            return Change(UPDATE, *details)
        return self.kept_or_adopted(self.record(ctx).get("bucket") == bucket,
                                    f"s3://{bucket}/{d.name}/: daily backups kept "
                                    f"{d.backup_days} days", describe_lock(d))

    def apply(self, ctx, current, change):
        d, bucket = ctx.deployment, current["bucket"]
        if change.action == ADOPT:
            return self.adopt(ctx, bucket=bucket)
        s3 = ctx.aws.client("s3")
        partition = ctx.facts.get("partition", "aws")
        if not current["exists"]:
            extra = {} if ctx.aws.region == "us-east-1" else {
                "CreateBucketConfiguration": {"LocationConstraint": ctx.aws.region}}
            call("create the backup bucket", s3.create_bucket, Bucket=bucket,
                 ObjectOwnership="BucketOwnerEnforced", ObjectLockEnabledForBucket=True,
                 **extra)
            call("tag the backup bucket", s3.put_bucket_tagging, Bucket=bucket,
                 Tagging={"TagSet": ctx.aws.tags(d.name, bucket)})
            self.save_record(ctx, bucket=bucket)
            wrong = set(drift({"encryption": [], "versioning": "", "public_access": {},
                               "policy": None, "lifecycle": None, "object_lock": None},
                              d, bucket))
        else:
            wrong = set(drift(current["settings"], d, bucket, partition))
        if "public_access" in wrong:
            call("block public access to the bucket", s3.put_public_access_block,
                 Bucket=bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS)
        if "encryption" in wrong:
            call("turn on the bucket's default encryption", s3.put_bucket_encryption,
                 Bucket=bucket, ServerSideEncryptionConfiguration=ENCRYPTION)
        if "versioning" in wrong:
            call("turn on versioning", s3.put_bucket_versioning, Bucket=bucket,
                 VersioningConfiguration={"Status": "Enabled"})
        if "policy" in wrong:
            call("put the TLS-only bucket policy", s3.put_bucket_policy, Bucket=bucket,
                 Policy=json.dumps(tls_policy(bucket, partition)))
        if "lifecycle" in wrong:
            call("put the lifecycle rules", s3.put_bucket_lifecycle_configuration,
                 Bucket=bucket, LifecycleConfiguration=lifecycle(d))
        if "object_lock" in wrong:
            # After versioning: S3 enables the lock in place only on a versioned bucket.
            call("lock the backups for --backup-days", s3.put_object_lock_configuration,
                 Bucket=bucket, ObjectLockConfiguration=object_lock(d))
        ctx.aws.forget(("bucket_settings", bucket), ("backup_bucket", d.name))
        if d.ses_credentials == "role":
            ctx.aws.forget(("backup_role_policy", iam_name(ctx)))
            call("let the role write backups", ctx.aws.client("iam").put_role_policy,
                 RoleName=iam_name(ctx), PolicyName=ROLE_POLICY_NAME,
                 PolicyDocument=json.dumps(self.wanted_policy(ctx, bucket)))
        self.save_record(ctx, bucket=bucket)
        return CREATED if change.action == CREATE else UPDATED

    def cost_lines(self, ctx):
        """Storage for ``backup_days`` daily backups the size of the newest one (or of
        :data:`ASSUMED_BACKUP_GIB` before there is one)."""
        d = ctx.deployment
        size = self._newest_size(ctx)
        label = f"about {size:.2f} GiB" if size else f"{ASSUMED_BACKUP_GIB:.1f} GiB assumed"
        return [(f"S3 backups, {d.backup_days} daily of {label}",
                 pricing.s3_month((size or ASSUMED_BACKUP_GIB) * d.backup_days))]

    def _newest_size(self, ctx):
        """GiB of the newest backup, or None; listed only when a cost is shown (a run
        without --plan or -v 2 shows none)."""
        found = ctx.facts.get("backup_bucket_found")
        if not found:
            return None
        newest = ctx.aws.cached(("backups", found), lambda: list_backups(
            Config(bucket=found, prefix=ctx.deployment.name, region=ctx.aws.region),
            ctx.aws.client("s3")))
        return newest[0]["size"] / 2 ** 30 if newest else None

    def teardown(self, ctx, current):
        doomed_name = ctx.options.get("delete_backups")
        if doomed_name is not None and doomed_name != ctx.deployment.name:
            raise ConfigError(f"--delete-backups {doomed_name!r} is not the deployment's name.",
                              f"Give --delete-backups {ctx.deployment.name} to delete its "
                              "backups for good, or leave it out to keep them.")
        lines = []
        if current["role_policy"] is not None:
            lines.append(f"the role's permission to write backups ({ROLE_POLICY_NAME})")
        if current["exists"] and ctx.options.get("delete_backups"):
            lines.append(f"S3 bucket {current['bucket']} and EVERY BACKUP in it "
                         "(--delete-backups)")
        return lines

    def destroy(self, ctx, current):
        done = []
        if current["role_policy"] is not None:
            call("delete the role's backup policy", ctx.aws.client("iam").delete_role_policy,
                 missing=("NoSuchEntity",), RoleName=iam_name(ctx),
                 PolicyName=ROLE_POLICY_NAME)
            done.append(f"deleted the role's backup policy {ROLE_POLICY_NAME}")
        if current["exists"] and ctx.options.get("delete_backups"):
            empty_and_delete(ctx.aws.client("s3"), current["bucket"])
            ctx.state.set(self.state_key, None)
            done.append(f"deleted S3 bucket {current['bucket']} and its backups")
        return done


def empty_and_delete(s3, bucket):
    """Delete every object version and delete marker, then the bucket."""
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
    for page in pages:
        doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                  for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if doomed:
            # Governance mode yields to the operator who asks; compliance mode to nobody.
            answer = call("delete the backups", s3.delete_objects, Bucket=bucket,
                          Delete={"Objects": doomed, "Quiet": True},
                          BypassGovernanceRetention=True)
            # S3 answers 200 and lists the keys it could not delete (AccessDenied...).
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise AWSError(f"S3 did not delete {len(errors)} backup object(s) of "
                               f"s3://{bucket}, e.g. {first.get('Key')}: "
                               f"{first.get('Code')}: {first.get('Message')}.",
                               "Give the credentials s3:DeleteObject, "
                               "s3:DeleteObjectVersion and s3:BypassGovernanceRetention on "
                               "the bucket (aws_provision --operator-policy has them), then "
                               "run --destroy again. Backups under compliance-mode Object "
                               "Lock cannot be deleted by anyone before their retention "
                               "ends: run it again then.")
    call("delete the backup bucket", s3.delete_bucket, Bucket=bucket)


def leftovers(ctx):
    """The bucket, when it outlives ``--destroy`` (it is kept unless asked otherwise)."""
    bucket = find_bucket(ctx.aws, ctx.deployment, (ctx.state.get("backups") or {}).get("bucket"))
    if bucket is None:
        return []
    s3 = ctx.aws.client("s3")
    size = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        size += sum(v["Size"] for v in page.get("Versions", []))
    gib = size / 2 ** 30
    return [(f"S3 bucket {bucket} with the backups ({gib:.2f} GiB), kept on purpose: "
             f"delete it with aws_provision --destroy --delete-backups {ctx.deployment.name}",
             pricing.s3_month(gib))]
