"""Who is told, and what heals by itself: the deployment's alerts topic (SNS) with the
operator's addresses, CloudWatch alarms on the EC2 status checks (a failed system check
recovers the instance, a failed instance check reboots it) and a Route 53 health check of
the liveness page over HTTPS, with its alarm.

Route 53 publishes health-check metrics only in us-east-1, and an alarm may only notify a
topic of its own region: a deployment in another region gets a second topic of the same
name in us-east-1, with the same addresses subscribed (each address confirms both). A
topic in us-east-1 for everything would work for the site's alarm only: the EC2 alarms
must live in the instance's region, and so must their topic.

Topics, alarms and the health check are found by name (the health check by its caller
reference), like the IAM resources: no tag lookup, one read per kind on a run that
changes nothing.
"""

import datetime

from ..engine import ADOPT, ADOPTED, CREATE, CREATED, UPDATE, UPDATED, Change
from ..errors import ConfigError
from ..host.base import LIVENESS_PATH
from . import pricing
from .base import AWSStep, note
from .session import call

WATCH_REGION = "us-east-1"  # where Route 53's health-check metrics are
HTTPS_PORT = 443
PENDING = "PendingConfirmation"


def topic_name(deployment):
    return f"helios-{deployment.name}-alerts"


def topic_regions(region):
    """The deployment's region, then us-east-1 when it is another one."""
    return [region] + ([WATCH_REGION] if region != WATCH_REGION else [])


def topic_arn(ctx, region):
    return (f"arn:{ctx.facts.get('partition', 'aws')}:sns:{region}:{ctx.facts['account']}:"
            f"{topic_name(ctx.deployment)}")


def addresses(deployment):
    return [a.strip() for a in deployment.alert_email.split(",") if a.strip()]


def alarm_name(deployment, what):
    return f"helios-{deployment.name}-{what}"


# (what, metric, EC2 action, evaluation periods, what it does)
EC2_ALARMS = (
    ("system-check", "StatusCheckFailed_System", "recover", 2,
     "a failed system status check recovers the instance on other hardware"),
    ("instance-check", "StatusCheckFailed_Instance", "reboot", 3,
     "a failed instance status check reboots it"),
)
SITE_ALARM = "site-health"


def alarm_names(deployment, region):
    """{region: [alarm names]} of the deployment's alarms."""
    names = {region: [alarm_name(deployment, what) for what, *_ in EC2_ALARMS]}
    names.setdefault(WATCH_REGION, []).append(alarm_name(deployment, SITE_ALARM))
    return names


def read_alarms(aws, deployment, region):
    """{name: alarm} of the deployment's alarms in ``region``, read once a run."""
    names = alarm_names(deployment, deployment.region).get(region, [])

    def fetch():
        cloudwatch = aws.client("cloudwatch", region)
        found = call("read the deployment's CloudWatch alarms", cloudwatch.describe_alarms,
                     AlarmNames=names, AlarmTypes=["MetricAlarm"])
        return {a["AlarmName"]: a for a in found["MetricAlarms"]}

    return aws.cached(("alarms", region), fetch) if names else {}


def ec2_alarm_spec(ctx, what, metric, action, periods):
    region, iid = ctx.aws.region, ctx.facts.get("instance_id")
    topic = topic_arn(ctx, region)
    return {
        "AlarmName": alarm_name(ctx.deployment, what),
        "AlarmDescription": f"helios-aws {ctx.deployment.name}: {metric} -> {action}",
        "Namespace": "AWS/EC2", "MetricName": metric,
        "Dimensions": [{"Name": "InstanceId", "Value": iid or "(the new instance)"}],
        "Statistic": "Maximum", "Period": 60, "EvaluationPeriods": periods,
        "Threshold": 1.0, "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "missing", "ActionsEnabled": True,
        "AlarmActions": [f"arn:{ctx.facts.get('partition', 'aws')}:automate:{region}:ec2:"
                         f"{action}", topic],
        "OKActions": [topic],
    }


def site_alarm_spec(ctx, health_check_id):
    topic = topic_arn(ctx, WATCH_REGION)
    return {
        "AlarmName": alarm_name(ctx.deployment, SITE_ALARM),
        "AlarmDescription": f"helios-aws {ctx.deployment.name}: https://"
                            f"{ctx.deployment.domain}{LIVENESS_PATH} fails from outside",
        "Namespace": "AWS/Route53", "MetricName": "HealthCheckStatus",
        "Dimensions": [{"Name": "HealthCheckId", "Value": health_check_id or "(new)"}],
        "Statistic": "Minimum", "Period": 60, "EvaluationPeriods": 3,
        "Threshold": 1.0, "ComparisonOperator": "LessThanThreshold",
        "TreatMissingData": "breaching", "ActionsEnabled": True,
        "AlarmActions": [topic], "OKActions": [topic],
    }


def alarm_drift(alarm, spec):
    """The fields of ``alarm`` that differ from ``spec`` ([] when none)."""
    if alarm is None:
        return ["missing"]
    return [key for key, value in spec.items()
            if key != "AlarmName" and (sorted(alarm.get(key) or [], key=str)
                                       if isinstance(value, list) else alarm.get(key))
            != (sorted(value, key=str) if isinstance(value, list) else value)]


def put_alarm(ctx, region, spec):
    cloudwatch = ctx.aws.client("cloudwatch", region)
    call(f"set the alarm {spec['AlarmName']}", cloudwatch.put_metric_alarm, **spec)
    ctx.aws.forget(("alarms", region))


def delete_alarms(ctx, region, names):
    if names:
        call("delete the deployment's alarms", ctx.aws.client("cloudwatch", region)
             .delete_alarms, AlarmNames=names)
        ctx.aws.forget(("alarms", region))
    return [f"deleted alarm {name}" for name in names]


def alarms_cost(count):
    return (f"CloudWatch alarms ({count}, standard resolution)",
            round(count * pricing.ALARM_MONTH, 2))


# ---------------------------------------------------------------------------- topics


def read_topic(ctx, region):
    """The topic's subscriptions ([] for none), or None when the topic does not exist."""
    def fetch():
        sns = ctx.aws.client("sns", region)
        found = call("read the alerts topic's subscriptions", sns.list_subscriptions_by_topic,
                     missing=("NotFound",), TopicArn=topic_arn(ctx, region))
        return None if found is None else found["Subscriptions"]

    return ctx.aws.cached(("topic", region), fetch)


def is_pending(ctx, region, subscription):
    """AWS lists an unconfirmed subscription without an ARN; one with an ARN is asked."""
    arn = subscription["SubscriptionArn"]
    if arn == PENDING:
        return True
    sns = ctx.aws.client("sns", region)
    attributes = call("read a subscription of the alerts topic",
                      sns.get_subscription_attributes, missing=("NotFound",),
                      SubscriptionArn=arn)
    return str(((attributes or {}).get("Attributes") or {}).get(PENDING, "false")).lower() \
        == "true"


class AlertTopicStep(AWSStep):
    """The alerts topic (one per region the alarms live in) and the operator's addresses
    subscribed by e-mail; an address dropped from --alert-email is unsubscribed."""

    name = "alerts (SNS)"
    state_key = "alerts"

    def read(self, ctx):
        confirmed = set(self.record(ctx).get("confirmed") or [])
        topics, pending = {}, set()
        for region in topic_regions(ctx.aws.region):
            subscriptions = read_topic(ctx, region)
            topics[region] = subscriptions
            for sub in subscriptions or []:
                if sub["Protocol"] != "email":
                    continue
                key = f"{region} {sub['Endpoint']}"
                # A confirmed subscription stays confirmed: it is asked about once.
                if key not in confirmed and is_pending(ctx, region, sub):
                    pending.add(sub["Endpoint"])
                elif sub["SubscriptionArn"] != PENDING:
                    confirmed.add(key)
        ctx.facts["alert_pending"] = sorted(pending)
        recorded = self.record(ctx)
        if recorded.get("topics") and sorted(confirmed) != recorded.get("confirmed"):
            # What AWS said once need not be asked again: the run saves it with the state.
            ctx.state.set(self.state_key, dict(recorded, confirmed=sorted(confirmed)))
        return {"topics": topics, "confirmed": sorted(confirmed)}

    def _differences(self, ctx, current):
        wanted = addresses(ctx.deployment)
        details = []
        for region, subscriptions in current["topics"].items():
            if subscriptions is None:
                details.append(f"topic {topic_name(ctx.deployment)} in {region}")
            there = {s["Endpoint"] for s in subscriptions or [] if s["Protocol"] == "email"}
            details += [f"subscribe {a} ({region})" for a in wanted if a not in there]
            details += [f"unsubscribe {e} ({region}): not in --alert-email"
                        for e in sorted(there - set(wanted))]
        return details

    def plan(self, ctx, current):
        wanted = addresses(ctx.deployment)
        if not wanted:
            note(ctx, "No address receives the deployment's alarms: give aws_configure "
                      "--alert-email ADDRESS (repeatable) and run aws_provision again.")
        pending = ctx.facts.get("alert_pending")
        if pending:
            note(ctx, f"Not yet confirmed: {', '.join(pending)}. Until the link in the "
                      "mail from AWS Notifications is followed, alarms reach nobody there.")
        details = self._differences(ctx, current)
        if any(subs is None for subs in current["topics"].values()):
            return Change(CREATE, *details)
        if details:
            return Change(UPDATE, *details)
        return self.kept_or_adopted(self.record(ctx).get("topics"),
                                    f"{topic_name(ctx.deployment)}: "
                                    f"{', '.join(wanted) or 'no address'}")

    def apply(self, ctx, current, change):
        record = {"topics": [topic_arn(ctx, r) for r in current["topics"]],
                  "confirmed": current["confirmed"]}
        if change.action == ADOPT:
            return self.adopt(ctx, **record)
        wanted = addresses(ctx.deployment)
        for region, subscriptions in current["topics"].items():
            ctx.aws.forget(("topic", region))
            sns = ctx.aws.client("sns", region)
            if subscriptions is None:
                call(f"create the alerts topic in {region}", sns.create_topic,
                     Name=topic_name(ctx.deployment))
            there = {s["Endpoint"]: s for s in subscriptions or [] if s["Protocol"] == "email"}
            for address in wanted:
                if address not in there:
                    call(f"subscribe {address} to the alerts", sns.subscribe,
                         TopicArn=topic_arn(ctx, region), Protocol="email", Endpoint=address)
            for endpoint, sub in there.items():
                if endpoint not in wanted and sub["SubscriptionArn"] != PENDING:
                    call(f"unsubscribe {endpoint} from the alerts", sns.unsubscribe,
                         SubscriptionArn=sub["SubscriptionArn"])
        if any(a for a in wanted if not any(a in c for c in record["confirmed"])):
            note(ctx, "AWS Notifications mails each new address a link to confirm; alarms "
                      "reach it only once it is followed.")
        self.save_record(ctx, **record)
        return CREATED if change.action == CREATE else UPDATED

    def cost_lines(self, ctx):
        return [("SNS alerts by e-mail (the first 1,000 a month are free)", 0.0)]

    def teardown(self, ctx, current):
        return [f"SNS topic {topic_name(ctx.deployment)} ({region}) and its subscriptions"
                for region, subs in current["topics"].items() if subs is not None]

    def destroy(self, ctx, current):
        done = []
        for region, subs in current["topics"].items():
            if subs is not None:
                call(f"delete the alerts topic in {region}",
                     ctx.aws.client("sns", region).delete_topic,
                     TopicArn=topic_arn(ctx, region))
                done.append(f"deleted SNS topic {topic_name(ctx.deployment)} ({region})")
        ctx.state.set(self.state_key, None)
        return done


def test_alert(ctx):
    """Publish one alert to the deployment's topic; returns what was done."""
    region = ctx.aws.region
    subscriptions = read_topic(ctx, region)
    if subscriptions is None:
        raise ConfigError(f"The deployment has no alerts topic in {region}.",
                          "Run aws_provision (with aws_configure --alert-email first).")
    call("publish a test alert", ctx.aws.client("sns", region).publish,
         TopicArn=topic_arn(ctx, region),
         Subject=f"helios-aws {ctx.deployment.name}: test alert",
         Message=f"A test alert of the Helios deployment {ctx.deployment.name} "
                 f"({ctx.deployment.domain}), sent by aws_provision --test-alert. "
                 "The alarms of the deployment reach you the same way.")
    told = [s["Endpoint"] for s in subscriptions if s["SubscriptionArn"] != PENDING]
    return told


# ---------------------------------------------------------------------------- alarms


class MachineAlarmsStep(AWSStep):
    """Alarms on the instance's status checks: recover on a failed system check, reboot
    on a failed instance check; both notify the alerts topic."""

    name = "machine alarms (CloudWatch)"
    state_key = "machine_alarms"

    def specs(self, ctx):
        return [ec2_alarm_spec(ctx, what, metric, action, periods)
                for what, metric, action, periods, _ in EC2_ALARMS]

    def read(self, ctx):
        ours = {alarm_name(ctx.deployment, what) for what, *_ in EC2_ALARMS}
        return {"alarms": {name: alarm for name, alarm in
                           read_alarms(ctx.aws, ctx.deployment, ctx.aws.region).items()
                           if name in ours}}

    def plan(self, ctx, current):
        wrong = [(s["AlarmName"], alarm_drift(current["alarms"].get(s["AlarmName"]), s))
                 for s in self.specs(ctx)]
        wrong = [(name, fields) for name, fields in wrong if fields]
        if not current["alarms"]:
            return Change(CREATE, *(f"{alarm_name(ctx.deployment, w)}: {says}"
                                    for w, _, _, _, says in EC2_ALARMS))
        if wrong:
            return Change(UPDATE, *(f"{name}: {', '.join(fields)}" for name, fields in wrong))
        return self.kept_or_adopted(self.record(ctx).get("names"),
                                    ", ".join(sorted(current["alarms"])))

    def apply(self, ctx, current, change):
        specs = self.specs(ctx)
        if change.action != ADOPT:
            for spec in specs:
                if alarm_drift(current["alarms"].get(spec["AlarmName"]), spec):
                    put_alarm(ctx, ctx.aws.region, spec)
        self.save_record(ctx, names=[s["AlarmName"] for s in specs])
        return {ADOPT: ADOPTED, CREATE: CREATED}.get(change.action, UPDATED)

    def cost_lines(self, ctx):
        return [alarms_cost(len(EC2_ALARMS))]

    def teardown(self, ctx, current):
        return [f"CloudWatch alarm {name}" for name in sorted(current["alarms"])]

    def destroy(self, ctx, current):
        ctx.state.set(self.state_key, None)
        return delete_alarms(ctx, ctx.aws.region, sorted(current["alarms"]))


# ---------------------------------------------------------------------------- the site


def caller_prefix(ctx):
    return f"helios-aws:{ctx.aws.region}:{ctx.deployment.name}:"


def health_config(deployment):
    return {"Type": "HTTPS", "FullyQualifiedDomainName": deployment.domain,
            "Port": HTTPS_PORT, "ResourcePath": LIVENESS_PATH, "RequestInterval": 30,
            "FailureThreshold": 3, "EnableSNI": True}


def find_health_check(ctx):
    def fetch():
        route53 = ctx.aws.client("route53")
        found = call("list the Route 53 health checks", route53.list_health_checks)
        return found["HealthChecks"]

    ours = [h for h in ctx.aws.cached("health_checks", fetch)
            if h["CallerReference"].startswith(caller_prefix(ctx))]
    return ours[0] if ours else None


class SiteHealthStep(AWSStep):
    """A Route 53 health check of the liveness page over HTTPS, from AWS's checkers, and
    its alarm (in us-east-1, notifying the topic there)."""

    name = "site health check (Route 53)"
    state_key = "site_health"

    def read(self, ctx):
        check = find_health_check(ctx)
        alarm = read_alarms(ctx.aws, ctx.deployment, WATCH_REGION).get(
            alarm_name(ctx.deployment, SITE_ALARM))
        return {"check": check, "alarm": alarm}

    def _check_drift(self, ctx, check):
        config = check["HealthCheckConfig"]
        # The type and the interval are fixed at creation (a check of another type is
        # replaced; another interval is kept: it only costs more or less).
        return [key for key, value in health_config(ctx.deployment).items()
                if key not in ("Type", "RequestInterval") and config.get(key) != value]

    def plan(self, ctx, current):
        d, check = ctx.deployment, current["check"]
        url = f"https://{d.domain}{LIVENESS_PATH}"
        if check is None:
            return Change(CREATE, f"{url} from AWS's checkers every 30 s; alarm "
                                  f"{alarm_name(d, SITE_ALARM)} ({WATCH_REGION}) after 3 "
                                  "minutes of failures")
        details = [f"health check {check['Id']}: {key}" for key in self._check_drift(ctx, check)]
        if check["HealthCheckConfig"].get("Type") != "HTTPS":
            details.append(f"health check {check['Id']} is not HTTPS: replace it")
        fields = alarm_drift(current["alarm"], site_alarm_spec(ctx, check["Id"]))
        if fields:
            details.append(f"alarm {alarm_name(d, SITE_ALARM)}: {', '.join(fields)}")
        if details:
            return Change(UPDATE, *details)
        return self.kept_or_adopted(self.record(ctx).get("id") == check["Id"],
                                    f"{check['Id']}: {url}")

    def apply(self, ctx, current, change):
        check = current["check"]
        route53 = ctx.aws.client("route53")
        if change.action == ADOPT:
            return self.adopt(ctx, id=check["Id"])
        if check is not None and check["HealthCheckConfig"].get("Type") != "HTTPS":
            call("delete a health check that is not HTTPS", route53.delete_health_check,
                 HealthCheckId=check["Id"])
            check = None
        if check is None:
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
            check = call("create the site's health check", route53.create_health_check,
                         CallerReference=caller_prefix(ctx) + stamp,
                         HealthCheckConfig=health_config(ctx.deployment))["HealthCheck"]
        elif self._check_drift(ctx, check):
            config = health_config(ctx.deployment)
            config.pop("Type")
            config.pop("RequestInterval")  # fixed at creation
            call("correct the site's health check", route53.update_health_check,
                 HealthCheckId=check["Id"], **config)
        ctx.aws.forget("health_checks")
        # Recorded before the alarm: a run that stops here adopts the check next time.
        self.save_record(ctx, id=check["Id"])
        spec = site_alarm_spec(ctx, check["Id"])
        if alarm_drift(current["alarm"], spec):
            put_alarm(ctx, WATCH_REGION, spec)
        return CREATED if change.action == CREATE else UPDATED

    def cost_lines(self, ctx):
        return [("Route 53 health check (HTTPS, AWS endpoint)",
                 round(pricing.HEALTH_CHECK_MONTH + pricing.HEALTH_CHECK_HTTPS_MONTH, 2)),
                alarms_cost(1)]

    def teardown(self, ctx, current):
        found = []
        if current["check"]:
            found.append(f"Route 53 health check {current['check']['Id']} of "
                         f"{ctx.deployment.domain}")
        if current["alarm"]:
            found.append(f"CloudWatch alarm {current['alarm']['AlarmName']} ({WATCH_REGION})")
        return found

    def destroy(self, ctx, current):
        done = delete_alarms(ctx, WATCH_REGION, [current["alarm"]["AlarmName"]]
                             if current["alarm"] else [])
        if current["check"]:
            call("delete the site's health check",
                 ctx.aws.client("route53").delete_health_check,
                 HealthCheckId=current["check"]["Id"])
            ctx.aws.forget("health_checks")
            done.append(f"deleted Route 53 health check {current['check']['Id']}")
        ctx.state.set(self.state_key, None)
        return done


# ---------------------------------------------------------------------------- actions


def set_alarm_actions(ctx, enabled):
    """--stop disables every alarm's actions (a stopped server must not page or be
    recovered), --start enables them; returns one line, or None when there is no alarm."""
    names = []
    for region in alarm_names(ctx.deployment, ctx.aws.region):
        found = sorted(read_alarms(ctx.aws, ctx.deployment, region))
        if found:
            cloudwatch = ctx.aws.client("cloudwatch", region)
            operation = (cloudwatch.enable_alarm_actions if enabled
                         else cloudwatch.disable_alarm_actions)
            call(f"{'enable' if enabled else 'disable'} the alarms' actions", operation,
                 AlarmNames=found)
            ctx.aws.forget(("alarms", region))
            names += found
    if not names:
        return None
    return (f"{'Enabled' if enabled else 'Disabled'} the actions of {len(names)} alarms "
            f"({', '.join(names)}).")


def leftovers(ctx):
    """[(description, USD per month or None)] of what --destroy should have deleted."""
    found = []
    for region in topic_regions(ctx.aws.region):
        ctx.aws.forget(("topic", region))
        if read_topic(ctx, region) is not None:
            found.append((f"SNS topic {topic_name(ctx.deployment)} ({region})", None))
    for region in alarm_names(ctx.deployment, ctx.aws.region):
        ctx.aws.forget(("alarms", region))
        for name in sorted(read_alarms(ctx.aws, ctx.deployment, region)):
            found.append((f"CloudWatch alarm {name} ({region})", pricing.ALARM_MONTH))
    ctx.aws.forget("health_checks")
    check = find_health_check(ctx)
    if check:
        found.append((f"Route 53 health check {check['Id']}",
                      pricing.HEALTH_CHECK_MONTH + pricing.HEALTH_CHECK_HTTPS_MONTH))
    return found
