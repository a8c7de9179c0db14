"""moto's IAM enforcement, for running real code with exactly the policies the tool writes.

The suite's moto server runs in this process (rig.MotoServer), so enforcement is switched
on by setting ``moto.settings.INITIAL_NO_AUTH_ACTION_COUNT`` to 0 and resetting moto's
request count, as ``POST /moto-api/reset-auth`` does for a server of its own.

What moto cannot judge is adapted here, and only that:

* moto matches resources only for S3: every other service's request is for ``*``, so a
  statement scoped to ARNs would never match. Non-S3 statements get ``Resource: *``;
  their actions stay exact. The ARNs are checked against AWS's reference instead
  (:func:`helios_aws.aws.policies.problems`).
* moto does not evaluate condition keys (a statement with a condition never allows):
  conditions are dropped here; that each key applies to its action is checked against
  the reference too.
* moto 5.2 rejects every Route 53 request's signature: signatures are not checked (the
  access key still names the user whose policies are judged).
* moto names a few S3 requests by their API name, not by their IAM action, and
  CloudWatch's by its endpoint prefix (``monitoring:``) (:data:`MOTO_SPELLINGS`): the
  test user also gets moto's spelling of those actions,
  on the bucket too (moto judges DeleteObjects on the bucket, AWS on each object).
"""

import contextlib
import copy
import json
import secrets

import boto3

from helios_aws.aws import policies

# IAM action -> the name moto 5.2 authorizes the same request by.
MOTO_SPELLINGS = {
    "s3:ListBucket": ["s3:ListObjectsV2", "s3:HeadBucket"],
    "s3:GetBucketPublicAccessBlock": ["s3:GetPublicAccessBlock"],
    "s3:PutBucketPublicAccessBlock": ["s3:PutPublicAccessBlock"],
    "s3:ListBucketVersions": ["s3:ListObjectVersions"],
    "s3:ListAllMyBuckets": ["s3:ListBuckets"],
    "s3:DeleteObject": ["s3:DeleteObjects"],
    "s3:GetEncryptionConfiguration": ["s3:GetBucketEncryption"],
    "s3:PutEncryptionConfiguration": ["s3:PutBucketEncryption"],
    "s3:GetLifecycleConfiguration": ["s3:GetBucketLifecycleConfiguration"],
    "s3:PutLifecycleConfiguration": ["s3:PutBucketLifecycleConfiguration"],
    "s3:GetBucketObjectLockConfiguration": ["s3:GetObjectLockConfiguration"],
    "s3:PutBucketObjectLockConfiguration": ["s3:PutObjectLockConfiguration"],
    # moto names CloudWatch's actions by its endpoint prefix.
    **{f"cloudwatch:{name}": [f"monitoring:{name}"] for name in (
        "DeleteAlarms", "DescribeAlarms", "DisableAlarmActions", "EnableAlarmActions",
        "PutMetricAlarm")},
    "cloudwatch:GetMetricData": ["monitoring:GetMetricData"],
}


def for_moto(document):
    """The document as moto can judge it (see the module docstring)."""
    document = copy.deepcopy(document)
    for statement in policies.statements(document):
        actions = policies.as_list(statement.get("Action"))
        if not all(a.lower().startswith("s3:") for a in actions):
            statement["Resource"] = "*"
        statement.pop("Condition", None)
        aliases = [alias for a in actions for alias in MOTO_SPELLINGS.get(a, [])]
        statement["Action"] = actions + aliases
        if aliases and statement["Resource"] != "*":
            # moto judges DeleteObjects on the bucket, AWS each object it deletes.
            resources = policies.as_list(statement["Resource"])
            statement["Resource"] = resources + sorted({r.split("/")[0] for r in resources})
    document["Statement"] = policies.statements(document)
    return document


def without(documents, action):
    """``documents`` with ``action`` taken out of every statement (a statement left with
    no action goes)."""
    documents = copy.deepcopy(documents)
    for document in documents:
        kept = []
        for statement in policies.statements(document):
            statement["Action"] = [a for a in policies.as_list(statement.get("Action"))
                                   if a != action]
            if statement["Action"]:
                kept.append(statement)
        document["Statement"] = kept
    return [d for d in documents if d["Statement"]]


def actions(documents):
    """Every action the documents name, in order, once."""
    found = []
    for document in documents:
        for statement in policies.statements(document):
            for action in policies.as_list(statement.get("Action")):
                if action not in found:
                    found.append(action)
    return found


class Denials:
    """What moto judged while enforcing: ``seen``, the refused requests as
    "s3:ListBucket on arn:..."; ``made``, every request as (action, resource)."""

    def __init__(self):
        self.seen = []
        self.made = []


def refused(documents, made):
    """The requests of ``made`` that moto's own evaluator refuses under ``documents``
    (adapted for moto as the enforced user's are): what the same run would have been
    refused with these policies."""
    from moto.iam.access_control import IAMPolicy, PermissionResult

    judged = [IAMPolicy(json.dumps(for_moto(d))) for d in documents]
    found = []
    for action, resource in made:
        if action == "sts:GetCallerIdentity":
            continue  # AWS allows it to everyone, whatever the policies say
        results = [p.is_action_permitted(action, resource) for p in judged]
        if PermissionResult.DENIED in results or PermissionResult.PERMITTED not in results:
            found.append(f"{action} on {resource}")
    return found


@contextlib.contextmanager
def enforced(documents, monkeypatch, record_only=False):
    """An IAM user carrying exactly ``documents`` (adapted for moto); within the block
    boto3 in this process and its children use the user's key, and moto enforces IAM.
    Yields a :class:`Denials`. With ``record_only`` the denials are recorded and let
    through (to see every missing action in one run while writing a policy)."""
    import moto.iam.access_control as access_control
    import moto.settings
    from moto.core.authorization import ActionAuthenticatorMixin

    iam = boto3.client("iam")
    name = f"enforced-{secrets.token_hex(4)}"
    iam.create_user(UserName=name)
    for index, document in enumerate(documents):
        iam.put_user_policy(UserName=name, PolicyName=f"p{index}",
                            PolicyDocument=json.dumps(for_moto(document)))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    denials = Denials()
    original = access_control.IAMRequestBase.check_action_permitted

    def check(request, resource):
        denials.made.append((request._action, resource))
        try:
            return original(request, resource)
        except Exception:
            denials.seen.append(f"{request._action} on {resource}")
            if not record_only:
                raise

    monkeypatch.setattr(access_control.IAMRequestBase, "check_action_permitted", check)
    # moto 5.2 computes Route 53's request signature wrongly (SignatureDoesNotMatch for
    # every call); the key still says who calls, and permissions are what is tested.
    monkeypatch.setattr(access_control.IAMRequest, "check_signature", lambda request: None)
    with monkeypatch.context() as scoped:
        scoped.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        scoped.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        previous = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
        ActionAuthenticatorMixin.request_count = 0
        try:
            yield denials
        finally:
            moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = previous
