"""The alarms that reach the operator, against the moto server: the alerts topic and its
subscriptions, the EC2 status-check alarms, the Route 53 health check and its alarm in
us-east-1; drift repair and adoption, --stop/--start, --test-alert, --destroy, and
aws_check reading the alarms.

moto does not evaluate alarms, confirms e-mail subscriptions at once and never ages an
alarm's state: the tests set states with set_alarm_state, and play AWS's part in the
moto server's own objects (it runs in this process) for an unconfirmed subscription and
for an alarm that has lacked data for hours.
"""

import collections
import datetime
import re

import boto3
import pytest
from moto.cloudwatch.models import cloudwatch_backends
from moto.sns.models import sns_backends

from fixtures import run_manage
from helios_aws import provision
from helios_aws.errors import ConfigError
from helios_aws.aws.session import AWS
from helios_aws.host.base import LIVENESS_PATH
from helios_aws.probes import base
from test_provision_aws import (  # noqa: F401  (aws, host_keys, configured, project: fixtures)
    DOMAIN, FORCED, SETTINGS, aws, configured, create_zone, forced, host_keys, in_process,
    project,
)

ACCOUNT = "123456789012"
OPS, ME = "ops@example.org", "me@example.org"
WATCH_STEPS = ("alerts (SNS)", "machine alarms (CloudWatch)", "site health check (Route 53)")


def provisioned(tmp_path, **fields):
    """A deployment provisioned in-process (--skip-host); returns (ctx, output lines)."""
    fields.setdefault("alert_email", f"{OPS},{ME}")
    ctx, out, _ = in_process(tmp_path, **fields)
    provision.provision(ctx, out)
    return in_process(tmp_path, **fields)


def topic(region="us-east-1"):
    return f"arn:aws:sns:{region}:{ACCOUNT}:helios-helios-alerts"


def alarms(region="us-east-1"):
    found = boto3.client("cloudwatch", region_name=region).describe_alarms()["MetricAlarms"]
    return {a["AlarmName"]: a for a in found}


def emails(region="us-east-1"):
    return sorted(s["Endpoint"] for s in boto3.client("sns", region_name=region)
                  .list_subscriptions_by_topic(TopicArn=topic(region))["Subscriptions"])


def health_checks():
    return boto3.client("route53").list_health_checks()["HealthChecks"]


def run_alarm_probes():
    ctx = base.Context(provisioned_deployment(), aws=AWS("us-east-1"))
    results = base.run([base.REGISTRY[i] for i in ("aws.E050", "aws.W050", "aws.W051")], ctx)
    return {r.id: r for r in results}


def provisioned_deployment():
    from helios_aws import params

    return params.build([{"domain": DOMAIN, "email": "elections@example.org",
                          "alert_email": f"{OPS},{ME}"}])


def test_topic_alarms_and_health_check_are_made_then_a_run_reads_each_kind_once(tmp_path):
    create_zone()
    ctx, out, lines = provisioned(tmp_path)

    assert emails() == [ME, OPS]
    iid = ctx.state.get("instance")["id"]
    found = alarms()
    system, instance = found["helios-helios-system-check"], found["helios-helios-instance-check"]
    assert system["MetricName"] == "StatusCheckFailed_System"
    assert system["AlarmActions"] == ["arn:aws:automate:us-east-1:ec2:recover", topic()]
    assert instance["MetricName"] == "StatusCheckFailed_Instance"
    assert instance["AlarmActions"] == ["arn:aws:automate:us-east-1:ec2:reboot", topic()]
    assert system["Dimensions"] == instance["Dimensions"] == [
        {"Name": "InstanceId", "Value": iid}]
    check, = health_checks()
    config = check["HealthCheckConfig"]
    assert (config["Type"], config["FullyQualifiedDomainName"], config["Port"],
            config["ResourcePath"]) == ("HTTPS", DOMAIN, 443, LIVENESS_PATH)
    site = found["helios-helios-site-health"]
    assert (site["Namespace"], site["MetricName"]) == ("AWS/Route53", "HealthCheckStatus")
    assert site["Dimensions"] == [{"Name": "HealthCheckId", "Value": check["Id"]}]
    assert site["AlarmActions"] == [topic()] and site["TreatMissingData"] == "breaching"

    provision.provision(ctx, out)  # AWS is asked once whether the new addresses confirmed
    ctx, out, lines = in_process(tmp_path, alert_email=f"{OPS},{ME}")
    calls = collections.Counter()
    ctx.aws.session.events.register("before-call", lambda model, **kwargs: calls.update(
        [f"{model.service_model.service_name}.{model.name}"]))
    results = provision.provision(ctx, out)

    assert {step.name: outcome for step, outcome, _ in results if step.name in WATCH_STEPS} \
        == dict.fromkeys(WATCH_STEPS, "unchanged")
    # One read per kind: the topic's subscriptions, the alarms, the health checks.
    assert {k: v for k, v in calls.items() if k in ("sns.ListSubscriptionsByTopic",
            "cloudwatch.DescribeAlarms") or k.split(".")[0] == "sns" or "Alarm" in k
            or "HealthCheck" in k} == {"sns.ListSubscriptionsByTopic": 1,
                                       "cloudwatch.DescribeAlarms": 1,
                                       "route53.ListHealthChecks": 1}
    assert "  Route 53 health check (HTTPS, AWS endpoint)" in "\n".join(lines)
    assert any(line.startswith("  CloudWatch alarms (2, standard resolution)")
               and line.endswith("0.20") for line in lines)


def test_another_region_gets_its_alarms_there_and_the_site_alarm_in_us_east_1(tmp_path):
    create_zone()
    provisioned(tmp_path, region="us-west-2")

    assert emails("us-west-2") == emails("us-east-1") == [ME, OPS]
    assert set(alarms("us-west-2")) == {"helios-helios-system-check",
                                        "helios-helios-instance-check"}
    assert alarms("us-west-2")["helios-helios-system-check"]["AlarmActions"][0] == \
        "arn:aws:automate:us-west-2:ec2:recover"
    site, = alarms("us-east-1").values()
    assert site["AlarmActions"] == [topic("us-east-1")]


def test_drift_is_put_right_and_a_lost_state_file_adopts(tmp_path):
    create_zone()
    ctx, out, lines = provisioned(tmp_path)
    cloudwatch, route53 = boto3.client("cloudwatch"), boto3.client("route53")
    system = alarms()["helios-helios-system-check"]
    cloudwatch.put_metric_alarm(**{k: system[k] for k in (
        "AlarmName", "Namespace", "MetricName", "Dimensions", "Statistic", "Period",
        "EvaluationPeriods", "ComparisonOperator")}, Threshold=5.0, AlarmActions=[topic()])
    cloudwatch.delete_alarms(AlarmNames=["helios-helios-site-health"])
    check, = health_checks()
    route53.update_health_check(HealthCheckId=check["Id"], Port=8443)
    boto3.client("sns").subscribe(TopicArn=topic(), Protocol="email",
                                  Endpoint="gone@example.org")
    (ctx.out_dir / "state.json").unlink()

    ctx, out, lines = in_process(tmp_path, alert_email=f"{OPS},{ME}")
    results = provision.provision(ctx, out)

    done = {step.name: outcome for step, outcome, _ in results}
    assert [done[name] for name in WATCH_STEPS] == ["updated", "updated", "updated"]
    assert "      unsubscribe gone@example.org (us-east-1): not in --alert-email" in lines
    assert emails() == [ME, OPS]
    fixed = alarms()
    assert fixed["helios-helios-system-check"]["Threshold"] == 1.0
    assert fixed["helios-helios-system-check"]["AlarmActions"][0].endswith(":ec2:recover")
    assert "helios-helios-site-health" in fixed
    assert [h["HealthCheckConfig"]["Port"] for h in health_checks()] == [443]

    ctx, out, lines = in_process(tmp_path, alert_email=f"{OPS},{ME}")
    (ctx.out_dir / "state.json").unlink()
    ctx, out, lines = in_process(tmp_path, alert_email=f"{OPS},{ME}")
    results = provision.provision(ctx, out)

    assert {step.name: outcome for step, outcome, _ in results if step.name in WATCH_STEPS} \
        == dict.fromkeys(WATCH_STEPS, "adopted")
    assert len(health_checks()) == 1


def pending(address, region="us-east-1"):
    """What AWS shows until the address follows its link (moto confirms at once)."""
    for subscription in sns_backends[ACCOUNT][region].subscriptions.values():
        if subscription.endpoint == address:
            subscription.attributes["PendingConfirmation"] = "true"


def test_an_unconfirmed_address_is_said_by_the_plan_and_by_aws_check(tmp_path):
    create_zone()
    ctx, out, lines = in_process(tmp_path, alert_email=f"{OPS},{ME}")
    provision.provision(ctx, out)
    pending(ME)

    ctx, out, lines = in_process(tmp_path, alert_email=f"{OPS},{ME}")
    provision.show_plan(ctx, out)
    results = run_alarm_probes()

    assert any(line.startswith(f"Note: Not yet confirmed: {ME}.") for line in lines), lines
    assert results["aws.W051"].status == "warn"
    assert results["aws.W051"].message == \
        f"{ME} has not confirmed (us-east-1): alarms do not reach it yet."


def test_aws_check_fails_on_an_alarm_in_alarm_and_warns_on_one_long_without_data(tmp_path):
    create_zone()
    provisioned(tmp_path)
    assert {r.status for r in run_alarm_probes().values()} == {"pass"}
    cloudwatch = boto3.client("cloudwatch")
    cloudwatch.set_alarm_state(AlarmName="helios-helios-instance-check", StateValue="ALARM",
                               StateReason="Threshold Crossed: 3 datapoints were 1.0")
    cloudwatch.set_alarm_state(AlarmName="helios-helios-site-health",
                               StateValue="INSUFFICIENT_DATA", StateReason="no data")
    fresh = run_alarm_probes()
    alarm = cloudwatch_backends[ACCOUNT]["us-east-1"].alarms["helios-helios-site-health"]
    alarm.state_updated_timestamp -= datetime.timedelta(hours=2)
    aged = run_alarm_probes()

    assert fresh["aws.E050"].status == "fail"
    assert fresh["aws.E050"].message.startswith(
        "In ALARM: helios-helios-instance-check (Threshold Crossed")
    assert fresh["aws.W050"].status == "pass"
    assert aged["aws.W050"].status == "warn"
    assert "helios-helios-site-health" in aged["aws.W050"].message


def test_stop_start_test_alert_and_destroy(project):
    create_zone()
    configured_alerts = run_manage(project, "aws_configure", SETTINGS, "--no-input",
                                   "--alert-email", OPS, "--alert-email", ME)
    assert configured_alerts.returncode == 0, configured_alerts.stderr
    created = run_manage(project, "aws_provision", SETTINGS, "--skip-host")
    assert created.returncode == 0, created.stderr
    assert emails() == [ME, OPS]

    stopped = forced(project, "--stop")  # no server answers SSH (test_provision_aws)
    enabled_when_stopped = {n: a["ActionsEnabled"] for n, a in alarms().items()}
    started = run_manage(project, "aws_provision", SETTINGS, "--start")
    enabled_when_started = {n: a["ActionsEnabled"] for n, a in alarms().items()}
    alert = run_manage(project, "aws_provision", SETTINGS, "--test-alert")

    assert stopped.returncode == started.returncode == alert.returncode == 0
    assert "Disabled the actions of 3 alarms" in stopped.stdout
    assert set(enabled_when_stopped.values()) == {False} and len(enabled_when_stopped) == 3
    assert set(enabled_when_started.values()) == {True}
    assert f"Sent a test alert to {ME}, {OPS}." in alert.stdout or \
        f"Sent a test alert to {OPS}, {ME}." in alert.stdout
    sent = sns_backends[ACCOUNT]["us-east-1"].topics[topic()].sent_notifications
    assert len(sent) == 1 and "test alert" in sent[0][2]

    destroyed = run_manage(project, "aws_provision", SETTINGS, "--destroy", "--no-input",
                           "--no-backup", "--no-snapshot", *FORCED)

    # What it deletes is listed above the deletions, with what stops costing.
    assert "- SNS topic helios-helios-alerts (us-east-1) and its subscriptions" in \
        destroyed.stdout
    assert "- CloudWatch alarm helios-helios-site-health (us-east-1)" in destroyed.stdout
    assert re.search(r"Route 53 health check \(HTTPS, AWS endpoint\)\s+1\.50", destroyed.stdout)
    assert destroyed.returncode == 0, destroyed.stderr
    assert alarms() == {} and health_checks() == []
    assert boto3.client("sns").list_topics()["Topics"] == []
    still_there = destroyed.stdout.partition("Still there")[2]
    assert not any(kind in still_there for kind in ("SNS", "CloudWatch", "health check"))


def test_a_bad_alert_address_is_refused_naming_the_flag(project):
    result = run_manage(project, "aws_configure", SETTINGS, "--no-input",
                        "--alert-email", OPS, "--alert-email", "not-an-address")

    assert result.returncode != 0
    assert "--alert-email" in result.stderr and "is not an e-mail address" in result.stderr


def test_test_alert_goes_with_no_other_action():
    with pytest.raises(ConfigError) as raised:
        provision.check_options(provisioned_deployment(), {"test_alert": True, "plan": True})

    assert raised.value.message.startswith("--test-alert sends one alert and does nothing "
                                           "else; --plan does not go with it.")

