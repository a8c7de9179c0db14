"""Step 5: how the server may send mail, and nothing else.

By default an IAM role and instance profile: the instance gets short-lived credentials
from its metadata service and no key is ever written down. With ``--ses-credentials keys``
an IAM user with an access key (the guide's way), whose key goes into the .env (0600).
Either way one inline policy allows only ``ses:SendRawEmail``, and only as the
deployment's own identities (its mail domain and sender address), and
``ses:GetSendQuota``, which helios-aws's mail backend (helios_aws/mailer.py) reads to keep
every sending process together under the account's sending rate.
"""

import json

from .. import envfile
from ..configure import ENV_NAME
from ..engine import ADOPT, CREATE, CREATED, UPDATE, UPDATED, Change
from ..errors import AWSError
from ..files import read_text, write_atomic
from .base import AWSStep, iam_name, is_tagged
from .session import call

IAM_PATH = "/helios-aws/"
POLICY_NAME = "helios-ses-send"
TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}
# Helios sends with django.core.mail; django-ses (SES v1, as the overlay sets it up)
# sends each message with SendRawEmail.
SEND_ACTIONS = ["ses:SendRawEmail"]
KEY_ID, SECRET = "AWS_SES_ACCESS_KEY_ID", "AWS_SES_SECRET_ACCESS_KEY"


def mail_identities(deployment):
    """The SES identities the deployment sends as: its mail domain and its address."""
    return [deployment.email.rsplit("@", 1)[1], deployment.email]


def send_policy(ctx):
    prefix = (f"arn:{ctx.facts['partition']}:ses:{ctx.aws.region}:{ctx.facts['account']}"
              ":identity/")
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "SendMailAsTheDeploymentOnly",
            "Effect": "Allow",
            "Action": SEND_ACTIONS,
            "Resource": [prefix + identity for identity in mail_identities(ctx.deployment)],
        }, {
            # The mail backend reads the account's sending rate (MaxSendRate) to pace every
            # sending process under it (helios_aws/mailer.py); GetSendQuota takes no
            # resource.
            "Sid": "ReadTheSendingRate",
            "Effect": "Allow",
            "Action": ["ses:GetSendQuota"],
            "Resource": "*",
        }],
    }


def _normal(policy):
    """A policy document in a form that compares equal however IAM reordered it."""
    if isinstance(policy, str):
        policy = json.loads(policy)
    statements = policy.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    normal = []
    for statement in statements:
        item = dict(statement)
        for key in ("Action", "Resource"):
            value = item.get(key)
            item[key] = sorted([value] if isinstance(value, str) else value or [])
        normal.append(json.dumps(item, sort_keys=True))
    return sorted(normal)


def same_policy(a, b):
    return _normal(a) == _normal(b)


def _policy_document(answer):
    return answer["PolicyDocument"] if answer else None


class MailRoleStep(AWSStep):
    """An IAM role for EC2 with the send-only policy, in an instance profile."""

    name = "mail permissions (IAM role)"
    state_key = "iam"

    def read(self, ctx):
        iam = ctx.aws.client("iam")
        name = iam_name(ctx)
        answer = ctx.aws.cached(("instance_profile", name), lambda: call(
            "read the instance profile", iam.get_instance_profile,
            missing=("NoSuchEntity",), InstanceProfileName=name))
        policy = ctx.aws.cached(("role_policy", name), lambda: call(
            "read the role's policy", iam.get_role_policy, missing=("NoSuchEntity",),
            RoleName=name, PolicyName=POLICY_NAME))
        profile = answer["InstanceProfile"] if answer else None
        ctx.facts["instance_profile_arn"] = profile["Arn"] if profile else (
            f"arn:{ctx.facts['partition']}:iam::{ctx.facts['account']}:instance-profile"
            f"{IAM_PATH}{name}")
        return {"name": name, "profile": profile, "policy": _policy_document(policy)}

    def plan(self, ctx, current):
        name, profile, policy = current["name"], current["profile"], current["policy"]
        if profile and not is_tagged(ctx, profile):
            raise AWSError(f"An instance profile named {name} exists without this "
                           "deployment's tag.",
                           "Delete it, or give the deployment another --name.")
        identities = ", ".join(mail_identities(ctx.deployment))
        details = []
        if policy is None:
            details.append(f"role {name} (for EC2) may send mail only as {identities}")
        elif not same_policy(policy, send_policy(ctx)):
            details.append(f"narrow the role's policy back to sending as {identities}")
        if profile is None:
            details.append(f"instance profile {name}")
        elif name not in [role["RoleName"] for role in profile["Roles"]]:
            details.append(f"put the role into the instance profile {name}")
        if not details:
            return self.kept_or_adopted(self.record(ctx).get("profile_arn") == profile["Arn"],
                                        f"role {name}: {', '.join(SEND_ACTIONS)} as "
                                        f"{identities}")
        return Change(CREATE if profile is None and policy is None else UPDATE, *details)

    def apply(self, ctx, current, change):
        name, profile = current["name"], current["profile"]
        if change.action == ADOPT:
            return self.adopt(ctx, role=name, profile_arn=profile["Arn"])
        iam = ctx.aws.client("iam")
        ctx.aws.forget(("instance_profile", name), ("role_policy", name))
        tags = ctx.aws.tags(ctx.deployment.name, name)
        if current["policy"] is None:
            made = call("create the IAM role", iam.create_role, missing=("EntityAlreadyExists",),
                        RoleName=name, Path=IAM_PATH, Tags=tags,
                        AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
                        Description=f"Helios {ctx.deployment.name}: send mail through SES")
            if made is None:
                self._check_tagged(ctx, iam, name)
        call("put the send-only policy on the role", iam.put_role_policy, RoleName=name,
             PolicyName=POLICY_NAME, PolicyDocument=json.dumps(send_policy(ctx)))
        if profile is None:
            made = call("create the instance profile", iam.create_instance_profile,
                        missing=("EntityAlreadyExists",), InstanceProfileName=name,
                        Path=IAM_PATH, Tags=tags)
            profile = (made or call("read the instance profile", iam.get_instance_profile,
                                    InstanceProfileName=name))["InstanceProfile"]
        if name not in [role["RoleName"] for role in profile["Roles"]]:
            call("put the role into the instance profile", iam.add_role_to_instance_profile,
                 InstanceProfileName=name, RoleName=name)
        self.save_record(ctx, role=name, profile_arn=profile["Arn"])
        ctx.facts["instance_profile_arn"] = profile["Arn"]
        return CREATED if change.action == CREATE else UPDATED

    def _check_tagged(self, ctx, iam, name):
        role = call("read the IAM role", iam.get_role, RoleName=name)["Role"]
        if not is_tagged(ctx, role):
            raise AWSError(f"An IAM role named {name} exists without this deployment's tag.",
                           "Delete it, or give the deployment another --name.")

    def teardown(self, ctx, current):
        if current["profile"] is None and current["policy"] is None:
            return []
        return [f"IAM role and instance profile {current['name']}"]

    def destroy(self, ctx, current):
        iam = ctx.aws.client("iam")
        name, profile = current["name"], current["profile"]
        done = []
        if profile:
            for role in profile["Roles"]:
                call("take the role out of the instance profile",
                     iam.remove_role_from_instance_profile, missing=("NoSuchEntity",),
                     InstanceProfileName=name, RoleName=role["RoleName"])
            call("delete the instance profile", iam.delete_instance_profile,
                 missing=("NoSuchEntity",), InstanceProfileName=name)
            done.append(f"deleted instance profile {name}")
        call("delete the role's policy", iam.delete_role_policy, missing=("NoSuchEntity",),
             RoleName=name, PolicyName=POLICY_NAME)
        if call("delete the IAM role", iam.delete_role, missing=("NoSuchEntity",),
                RoleName=name) is not None:
            done.append(f"deleted IAM role {name}")
        ctx.state.set(self.state_key, None)
        return done


class MailUserStep(AWSStep):
    """``--ses-credentials keys``: an IAM user with the send-only policy and one access
    key, written into the .env (0600). A working key in the .env is never replaced."""

    name = "mail credentials (IAM user)"
    state_key = "iam"

    def read(self, ctx):
        iam = ctx.aws.client("iam")
        name = iam_name(ctx)
        keys = ctx.aws.cached(("access_keys", name), lambda: call(
            "list the mail user's access keys", iam.list_access_keys,
            missing=("NoSuchEntity",), UserName=name))
        policy = ctx.aws.cached(("user_policy", name), lambda: call(
            "read the mail user's policy", iam.get_user_policy, missing=("NoSuchEntity",),
            UserName=name, PolicyName=POLICY_NAME))
        env = envfile.read(ctx.out_dir / ENV_NAME)
        ctx.secret(env.get(SECRET))
        return {
            "name": name,
            "keys": None if keys is None else [k["AccessKeyId"] for k in keys["AccessKeyMetadata"]],
            "policy": _policy_document(policy),
            "env_key_id": env.get(KEY_ID),
            "env_has_secret": bool(env.get(SECRET)),
        }

    def _key_usable(self, current):
        return bool(current["keys"] and current["env_key_id"] in current["keys"]
                    and current["env_has_secret"])

    def plan(self, ctx, current):
        name, keys = current["name"], current["keys"]
        identities = ", ".join(mail_identities(ctx.deployment))
        details = []
        if keys is None:
            details.append(f"IAM user {name}")
        if current["policy"] is None or not same_policy(current["policy"], send_policy(ctx)):
            details.append(f"user policy: send mail only as {identities}")
        if not self._key_usable(current):
            why = ""
            if current["env_key_id"] and keys is not None:
                why = f" (the key {current['env_key_id']} in .env is gone)"
            details.append(f"new access key, written to {ctx.out_dir / ENV_NAME} (0600){why}")
        if not details:
            return self.kept_or_adopted(self.record(ctx).get("user") == name,
                                        f"user {name}, key {current['env_key_id']} in .env")
        return Change(CREATE if keys is None else UPDATE, *details)

    def apply(self, ctx, current, change):
        name, keys = current["name"], current["keys"]
        if change.action == ADOPT:
            return self.adopt(ctx, user=name, access_key_id=current["env_key_id"])
        iam = ctx.aws.client("iam")
        ctx.aws.forget(("access_keys", name), ("user_policy", name))
        if keys is None:
            call("create the IAM user", iam.create_user, missing=("EntityAlreadyExists",),
                 UserName=name, Path=IAM_PATH, Tags=ctx.aws.tags(ctx.deployment.name, name))
        call("put the send-only policy on the user", iam.put_user_policy, UserName=name,
             PolicyName=POLICY_NAME, PolicyDocument=json.dumps(send_policy(ctx)))
        key_id = current["env_key_id"]
        if not self._key_usable(current):
            # No usable key exists (its secret is not in the .env and AWS never shows it
            # again); IAM allows two keys a user, so the unusable ones go first.
            for old in keys or ():
                call("delete an unusable access key", iam.delete_access_key,
                     missing=("NoSuchEntity",), UserName=name, AccessKeyId=old)
            key = call("create an access key", iam.create_access_key, UserName=name)["AccessKey"]
            key_id = key["AccessKeyId"]
            self._write_env(ctx, key_id, ctx.secret(key["SecretAccessKey"]))
        self.save_record(ctx, user=name, access_key_id=key_id)
        return CREATED if change.action == CREATE else UPDATED

    def _write_env(self, ctx, key_id, secret):
        path = ctx.out_dir / ENV_NAME
        merged = envfile.merge(read_text(path), {KEY_ID: key_id, SECRET: secret}, {},
                               forced={KEY_ID, SECRET}, name=str(path))
        write_atomic(path, merged.text, mode=0o600)
        ctx.detail(f"wrote {KEY_ID} and {SECRET} to {path}")

    def teardown(self, ctx, current):
        return [] if current["keys"] is None else [f"IAM user {current['name']} and its keys"]

    def destroy(self, ctx, current):
        if current["keys"] is None:
            return []
        iam = ctx.aws.client("iam")
        name = current["name"]
        for key_id in current["keys"]:
            call("delete an access key", iam.delete_access_key, missing=("NoSuchEntity",),
                 UserName=name, AccessKeyId=key_id)
        call("delete the user's policy", iam.delete_user_policy, missing=("NoSuchEntity",),
             UserName=name, PolicyName=POLICY_NAME)
        call("delete the IAM user", iam.delete_user, missing=("NoSuchEntity",), UserName=name)
        ctx.state.set(self.state_key, None)
        return [f"deleted IAM user {name} and its access keys"]
