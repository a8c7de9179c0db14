"""What every AWS step shares: names, tags, state records, teardown and cost lines.

Each AWS step finds its resource by the deployment tag first (``helios-aws:deployment =
NAME``), so a resource missing from the state file is adopted, never created twice.
Besides the engine's read/plan/apply, an AWS step can say what ``--destroy`` would delete
(:meth:`AWSStep.teardown`), delete it (:meth:`AWSStep.destroy`), and list what it costs.
"""

import time

from ..engine import ADOPT, ADOPTED, KEEP, Change, Step
from ..errors import StepTimeout
from .session import TAG_KEY


class AWSStep(Step):
    """A step over one kind of AWS resource.

    ``state_key`` names the step's record in the state file. ``read`` never raises for a
    missing resource (it returns ``None`` or an empty record); ``plan`` raises
    :class:`~helios_aws.errors.ConfigError` or :class:`~helios_aws.errors.AWSError` when
    the deployment cannot be provisioned as asked, before anything is changed.
    """

    state_key = ""

    def record(self, ctx):
        return ctx.state.get(self.state_key) or {}

    def save_record(self, ctx, **values):
        """Store the step's record and write the state file at once, so an interruption
        right after a resource is made cannot lose its id."""
        ctx.state.set(self.state_key, values or None)
        ctx.state.save()

    def kept_or_adopted(self, recorded, *details):
        """KEEP when the state file already knows the resource, else ADOPT it."""
        if recorded:
            return Change(KEEP, *details)
        return Change(ADOPT, "found by its tag; not in the state file yet", *details)

    def adopt(self, ctx, **values):
        self.save_record(ctx, **values)
        return ADOPTED

    def cost_lines(self, ctx):
        """[(item, USD per month or None when the price is unknown)] of what will exist."""
        return []

    def monthly_cost(self, ctx):
        known = [usd for _, usd in self.cost_lines(ctx) if usd is not None]
        return sum(known) if known else None

    def teardown(self, ctx, current):
        """What :meth:`destroy` would delete, one line each (nothing is changed)."""
        return []

    def destroy(self, ctx, current):
        """Delete what :meth:`teardown` listed; return one line per deleted thing."""
        return []


def deployment_tag(ctx):
    return {"Key": TAG_KEY, "Value": ctx.deployment.name}


def tag_filter(ctx):
    return [{"Name": f"tag:{TAG_KEY}", "Values": [ctx.deployment.name]}]


def tag_spec(ctx, resource_type, name=None):
    return [{"ResourceType": resource_type,
             "Tags": ctx.aws.tags(ctx.deployment.name, name or ec2_name(ctx))}]


def is_tagged(ctx, resource):
    return deployment_tag(ctx) in (resource.get("Tags") or [])


def ec2_name(ctx):
    """Name of the deployment's EC2 resources (unique within a region)."""
    return f"helios-{ctx.deployment.name}"


def iam_name(ctx):
    """Name of the deployment's IAM role, instance profile or user (IAM is global, so
    the region is part of it)."""
    return f"helios-{ctx.deployment.name}-{ctx.aws.region}"


def pick(ctx, what, items, id_key, recorded_id):
    """The one of ``items`` the state file names, else the first; extra ones are noted
    (they cost money or confuse, and only a person should decide to delete them)."""
    chosen = next((i for i in items if i[id_key] == recorded_id), items[0] if items else None)
    extra = [i[id_key] for i in items if i is not chosen]
    if extra:
        note(ctx, f"More than one {what} is tagged for deployment {ctx.deployment.name}: "
                  f"using {chosen[id_key]}; also found {', '.join(extra)}. Delete the extra "
                  "ones if nothing else uses them.")
    return chosen


def note(ctx, text):
    """A message for the end of the run, shown at every verbosity (and logged)."""
    notes = ctx.facts.setdefault("notes", [])
    if text not in notes:
        notes.append(text)
        ctx.log.info("note: %s", text)


def poll(check, action, max_seconds, delay, hint):
    """Call ``check()`` until it returns something true, for at most ``max_seconds``."""
    deadline = time.monotonic() + max_seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() + delay > deadline:
            raise StepTimeout(f"Timed out after {max_seconds}s waiting to {action}.", hint)
        time.sleep(delay)
