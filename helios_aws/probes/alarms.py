"""The deployment's alarms and who they reach, as CloudWatch and SNS see them now.

The alarms are found by the names aws_provision gives them (:mod:`helios_aws.aws.watch`),
in the deployment's region and in us-east-1 (the site's health check); the topics by
theirs. Nothing provisioned yet is a skip, never a pass.
"""

import datetime

from ..aws import watch
from ..aws.session import translate
from .aws import session
from .base import Skip, failed, passed, probe, warned

# An alarm that has had no data for this long is not watching anything.
INSUFFICIENT_DATA_WARNING = datetime.timedelta(hours=1)


def _alarms(ctx):
    def fetch():
        view = session(ctx)
        found = []
        for region in watch.alarm_names(ctx.deployment, ctx.deployment.region):
            with translate(f"read the deployment's alarms in {region}"):
                found += watch.read_alarms(view.aws, ctx.deployment, region).values()
        if not found:
            raise Skip(f"The deployment {ctx.deployment.name} has no alarm yet: run "
                       "aws_provision.")
        return found

    return ctx.once("alarms", fetch)


@probe("aws.E050", "No alarm of the deployment is in ALARM",
       "Read the alarm's reason (aws cloudwatch describe-alarms --alarm-names NAME) and "
       "put right what it watches: the instance, the site, or the service it names.")
def no_alarm_firing(ctx):
    alarms = _alarms(ctx)
    firing = [a for a in alarms if a["StateValue"] == "ALARM"]
    if firing:
        return failed("In ALARM: " + "; ".join(
            f"{a['AlarmName']} ({a.get('StateReason', '')[:160]})" for a in firing) + ".")
    return passed(f"{len(alarms)} alarms, none in ALARM.")


@probe("aws.W050", "No alarm has lacked data for long",
       "An alarm without data watches nothing: check that what it measures exists (the "
       "instance runs, the health check is there) and that aws_provision has run since "
       "the instance was replaced.")
def alarms_have_data(ctx):
    alarms = _alarms(ctx)
    now = datetime.datetime.now(datetime.timezone.utc)
    stale = [a for a in alarms if a["StateValue"] == "INSUFFICIENT_DATA"
             and now - a["StateUpdatedTimestamp"] > INSUFFICIENT_DATA_WARNING]
    if stale:
        return failed("Without data for over an hour: " + ", ".join(
            f"{a['AlarmName']} (since {a['StateUpdatedTimestamp']:%Y-%m-%d %H:%M} UTC)"
            for a in stale) + ".")
    return passed(f"{len(alarms)} alarms have data, or lost it less than an hour ago.")


@probe("aws.W051", "Every --alert-email address has confirmed its subscription",
       "Follow the link in the mail from AWS Notifications (run aws_provision again to "
       "have it sent to a new address); give aws_configure --alert-email if none is set.")
def alerts_confirmed(ctx):
    view = session(ctx)
    wanted = watch.addresses(ctx.deployment)
    view.facts = {"account": _account(view)}
    problems = []
    for region in watch.topic_regions(ctx.deployment.region):
        with translate(f"read the alerts topic in {region}"):
            subscriptions = watch.read_topic(view, region)
            if subscriptions is None:
                raise Skip(f"The deployment has no alerts topic in {region}: run "
                           "aws_provision.")
            by_address = {s["Endpoint"]: s for s in subscriptions if s["Protocol"] == "email"}
            for address in wanted:
                if address not in by_address:
                    problems.append(f"{address} is not subscribed ({region})")
                elif watch.is_pending(view, region, by_address[address]):
                    problems.append(f"{address} has not confirmed ({region})")
    if not wanted:
        return warned("No --alert-email address: the alarms reach nobody.")
    if problems:
        return failed("; ".join(problems) + ": alarms do not reach it yet.")
    return passed(f"Alarms reach {', '.join(wanted)}.")


def _account(view):
    with translate("read the AWS account"):
        return view.aws.client("sts").get_caller_identity()["Account"]
