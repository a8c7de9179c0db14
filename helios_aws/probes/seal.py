"""Election probes (area ``seal``): what the server's elections need from the operator.
Read over SSH by root's side (:mod:`helios_aws.freezeside`, as the freeze reads the open
elections), never changing anything."""

import json

from .. import freeze
from .base import failed, passed, probe

PENDING_SECONDS = 60


def _root_side(ctx, action):
    """root's side of ``action``, over the run's SSH connections (Skip without a host)."""
    return ctx.ssh().run(freeze.command(ctx.deployment, action),
                         timeout=max(ctx.timeout, PENDING_SECONDS))


@probe("seal.W001", "No election past its end has cast votes waiting to be verified",
       "Let Helios's worker verify them before anyone tallies (systemctl status "
       "helios-celery.service; journalctl -u helios-celery.service): a tally leaves "
       "unverified votes out.", timeout=PENDING_SECONDS)
def votes_pending(ctx):
    result = _root_side(ctx, freeze.PENDING_ACTION)
    out = (result.stdout or "").strip()
    if result.status == 0 and out == freeze.NO_HELIOS:
        return passed("No Helios release serves on the server yet: no election.")
    if result.status != 0:
        return failed("Cannot tell whether cast votes wait to be verified: "
                      f"{freeze.said(result)}",
                      "Make sure the server's database answers, and run aws_check again.")
    try:
        rows = json.loads(out.splitlines()[-1])
        waiting = [f"{row['short_name']} ({row['pending']} vote(s), voting ended "
                   f"{row['ended_at'][:16].replace('T', ' ')} UTC)" for row in rows]
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        return failed(f"Cannot tell whether cast votes wait to be verified: the server's "
                      f"answer was not understood ({exc}).",
                      "Run aws_provision to update root's helios-aws on the server.")
    if waiting:
        return failed("Cast votes wait to be verified in election(s) whose voting has "
                      "ended: " + ", ".join(waiting) + ". Do not tally yet.")
    return passed("No election past its end has votes waiting to be verified.")


@probe("seal.E001", "The server is what the seal of every open election records",
       "Put back what changed (aws_provision --rollback, or the sealed release), or, if the "
       "change was recorded with --force --reason, tell the election's administrators: "
       "the seal published at /.well-known/helios-seal/ no longer describes the server.",
       timeout=PENDING_SECONDS)
def sealed(ctx):
    result = ctx.ssh().run(freeze.seal_command(ctx.deployment, "drift"),
                           timeout=max(ctx.timeout, PENDING_SECONDS))
    out = (result.stdout or "").strip()
    if result.status == 0 and out == freeze.NO_HELIOS:
        return passed("No Helios release serves on the server yet: nothing is sealed.")
    if result.status != 0:
        return failed(f"Cannot compare the server with the seals: {freeze.said(result)}",
                      "Make sure the server's database answers, and run aws_check again.")
    try:
        found = json.loads(out.splitlines()[-1])
        drifted = {name: list(diffs) for name, diffs in found.items() if diffs}
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        return failed(f"Cannot compare the server with the seals: the server's answer was "
                      f"not understood ({exc}).",
                      "Run aws_provision to update root's helios-aws on the server.")
    if drifted:
        return failed("The server differs from the seal of "
                      + "; ".join(f"{name}: {', '.join(diffs)}"
                                  for name, diffs in sorted(drifted.items())) + ".")
    if not found:
        return passed("No election is open: nothing to compare with a seal.")
    return passed(f"The server is what the seal of {', '.join(sorted(found))} records.")
