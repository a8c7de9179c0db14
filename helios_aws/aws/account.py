"""Steps 1 and 2: whose AWS account this is, and which machine image a new server gets."""

from ..engine import KEEP, Change
from ..errors import AWSError, ConfigError
from ..params import ARCHES
from .base import AWSStep
from .session import call


def caller(ctx):
    """The caller's identity (account, ARN, partition), read once per run."""
    def fetch():
        sts = ctx.aws.client("sts")
        return call("read the AWS account (sts get-caller-identity)", sts.get_caller_identity)

    identity = ctx.aws.cached("caller", fetch)
    return {
        "account": identity["Account"],
        "arn": identity["Arn"],
        "partition": identity["Arn"].split(":")[1],
    }


class AccountStep(AWSStep):
    """The credentials work, and they are for the account the deployment lives in."""

    name = "AWS account"
    state_key = "account"

    def read(self, ctx):
        identity = caller(ctx)
        ctx.facts["account"] = identity["account"]
        ctx.facts["partition"] = identity["partition"]
        return identity

    def plan(self, ctx, current):
        recorded = self.record(ctx)
        region = ctx.aws.region
        if recorded.get("id", current["account"]) != current["account"]:
            raise ConfigError(
                f"This deployment's resources are in AWS account {recorded['id']}, but the "
                f"credentials are for account {current['account']} ({current['arn']}).",
                f"Use credentials for account {recorded['id']} (--profile or AWS_PROFILE), "
                "or give a new deployment its own --output directory.",
            )
        if recorded.get("region", region) != region:
            raise ConfigError(
                f"This deployment's resources are in region {recorded['region']}; "
                f"provisioning in {region} would make a second server.",
                "Drop --region, or --destroy the deployment before moving it, or give a "
                "deployment in another region its own --output directory.",
            )
        # Not a resource: remembering the account needs no change in AWS.
        ctx.state.set(self.state_key, {"id": current["account"], "region": region})
        return Change(KEEP, f"account {current['account']} as {current['arn']}, "
                            f"region {region}")

    def destroy(self, ctx, current):
        ctx.state.set(self.state_key, None)
        return []


def image_parameter(deployment):
    """The SSM public parameter naming the latest image of the deployment's OS."""
    return deployment.os_profile["ssm_parameter"].format(
        arch=deployment.arch, debian_arch=ARCHES[deployment.arch])


def latest_image(ctx):
    """The latest image's id for the deployment's OS and architecture (read once a run,
    kept in ``ctx.facts["image_id"]``), or None when AWS has no such parameter."""
    parameter = image_parameter(ctx.deployment)

    def fetch():
        ssm = ctx.aws.client("ssm")
        return call(f"read the SSM parameter {parameter}", ssm.get_parameters,
                    Names=[parameter])

    found = ctx.aws.cached(("ssm", parameter), fetch)["Parameters"]
    image_id = found[0]["Value"] if found else None
    ctx.facts.pop("image_recorded", None)
    if image_id:
        ctx.facts["image_id"] = image_id
    return image_id


def current_image(ctx):
    """The image a new instance is launched from: the latest, read now if the run took
    the recorded one."""
    if ctx.facts.get("image_recorded"):
        latest_image(ctx)
    return ctx.facts.get("image_id")


class ImageStep(AWSStep):
    """The latest image for the OS and architecture, from AWS's public SSM parameter.

    Only a new instance uses it: a running server is never replaced by a newer image.
    """

    name = "machine image"
    state_key = "image"

    def read(self, ctx):
        parameter = image_parameter(ctx.deployment)
        recorded = ctx.state.get(self.state_key) or {}
        if ((ctx.state.get("instance") or {}).get("id") and recorded.get("id")
                and recorded.get("parameter") == parameter):
            # A server is recorded: it is never replaced by a newer image, so the
            # parameter is read only if a new instance must be launched (latest_image).
            ctx.facts["image_id"], ctx.facts["image_recorded"] = recorded["id"], True
            return {"parameter": parameter, "image_id": recorded["id"], "recorded": True}
        image_id = latest_image(ctx)
        return {"parameter": parameter, "image_id": image_id}

    def plan(self, ctx, current):
        d = ctx.deployment
        if not current["image_id"]:
            raise AWSError(
                f"AWS has no public parameter {current['parameter']} in region "
                f"{ctx.aws.region}, so the latest {d.os_profile['label']} image for "
                f"{d.arch} is unknown.",
                "Check --os, --arch and --region (aws_configure records them).",
            )
        ctx.state.set(self.state_key, {"id": current["image_id"],
                                       "parameter": current["parameter"]})
        if current.get("recorded"):
            return Change(KEEP, f"{current['image_id']}: the server's {d.os_profile['label']} "
                                f"({d.arch}) image (the latest is read from "
                                f"{current['parameter']} only for a new instance)")
        return Change(KEEP, f"{current['image_id']}: latest {d.os_profile['label']} "
                            f"({d.arch}) from {current['parameter']}")

    def destroy(self, ctx, current):
        ctx.state.set(self.state_key, None)
        return []
