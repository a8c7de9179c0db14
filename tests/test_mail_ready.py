"""SES readiness before voting: the account's reputation in the plan and in aws_check,
whether the voters fit today's quota (given, or counted in a real PostgreSQL through the
fixture's models), and the request that takes the account out of the sandbox.

moto serves SES v1's quota and CloudWatch metrics; it does not serve SES v2's GetAccount
or PutAccountDetails, which are stubbed with botocore's Stubber where used.
"""

import datetime
import json
import os

import boto3
import pytest
from botocore.stub import Stubber

import rig
from fixtures import helios_env, make_fixture_project, run_manage
from helios_aws import provision
from helios_aws.aws import sending
from helios_aws.aws.mail import MailStep
from helios_aws.aws.session import AWS
from helios_aws.errors import ConfigError
from helios_aws.params import Deployment
from helios_aws.probes import base
from test_aws_check_aws import provision as provisioned
from test_provision_aws import create_zone, in_process

SENDER = "elections@example.org"
SETTINGS = "--settings=helios_aws.settings_overrides.production"


def publish_rates(bounce, complaint, minutes_ago=10):
    """What SES publishes to CloudWatch about the account (fractions)."""
    now = (datetime.datetime.now(datetime.timezone.utc)
           - datetime.timedelta(minutes=minutes_ago))
    boto3.client("cloudwatch").put_metric_data(Namespace="AWS/SES", MetricData=[
        {"MetricName": "Reputation.BounceRate", "Value": bounce, "Timestamp": now},
        {"MetricName": "Reputation.ComplaintRate", "Value": complaint, "Timestamp": now}])


def run_mail_probes(voters=None, aws=None):
    deployment = Deployment(name="helios", domain="vote.example.org", email=SENDER)
    ctx = base.Context(deployment, aws=aws or AWS("us-east-1"))
    ctx.voters = voters
    results = base.run([base.REGISTRY[i] for i in ("mail.E002", "mail.W002")], ctx)
    return {r.id: r for r in results}


def test_the_plan_reports_the_rates_and_warns_above_the_review_threshold(aws_env, tmp_path):
    create_zone()
    publish_rates(bounce=0.062, complaint=0.0004)
    ctx, _, _ = in_process(tmp_path)
    step = MailStep()

    change = step.plan(ctx, step.read(ctx))

    line, = [d for d in change.details if d.startswith("SES sandbox status")]
    assert line.endswith("bounce rate 6.20%, complaint rate 0.04%")
    bounce, = [n for n in ctx.facts["notes"] if "bounce rate" in n]
    assert "at or above the 5.0% at which AWS reviews the account" in bounce
    assert not [n for n in ctx.facts["notes"] if "complaint rate" in n]


def test_the_plan_names_the_request_while_in_the_sandbox(aws_env, tmp_path):
    create_zone()
    ctx, _, _ = in_process(tmp_path)
    with Stubber(ctx.aws.client("sesv2")) as stub:  # moto has no GetAccount
        stub.add_response("get_account", {
            "ProductionAccessEnabled": False, "SendingEnabled": True,
            "SendQuota": {"Max24HourSend": 200.0, "MaxSendRate": 1.0, "SentLast24Hours": 0.0}})
        MailStep().plan(ctx, MailStep().read(ctx))
    sandbox, = [n for n in ctx.facts["notes"] if "in the sandbox" in n]
    assert "aws_provision --request-production-access --use-case TEXT" in sandbox


@pytest.mark.parametrize("voters, status, words", [
    (150, "pass", "150 voter(s) to mail; 200 of 200 messages left in the 24-hour quota "
                  "(0 sent); at 1 a second they take 150 s (150 given by --voters)."),
    (201, "fail", "Today's quota cannot take them: 201 voter(s)"),
    (7200, "fail", "they take 2.0 h"),
])
def test_voters_against_todays_quota(aws_env, voters, status, words):
    # moto's account: 200 a day, 1 a second; its sandbox status is unknown (no GetAccount).
    provisioned()
    result = run_mail_probes(voters)["mail.E002"]
    assert result.status == status and words in result.message, result


def test_voters_in_the_sandbox_fail_with_the_request_to_make(aws_env):
    aws = AWS("us-east-1")
    with Stubber(aws.client("sesv2")) as stub:  # moto has no GetAccount
        stub.add_response("get_account", {
            "ProductionAccessEnabled": False, "SendingEnabled": True,
            "SendQuota": {"Max24HourSend": 200.0, "MaxSendRate": 1.0, "SentLast24Hours": 0.0}})
        result = run_mail_probes(10, aws)["mail.E002"]
    assert result.status == "fail"
    assert result.message.startswith("SES is in the sandbox: voters get no mail.")
    assert "--request-production-access" in result.hint


def test_rates_in_aws_check(aws_env):
    publish_rates(bounce=0.01, complaint=0.002)
    result = run_mail_probes()["mail.W002"]
    assert result.status == "warn"
    assert "The complaint rate is 0.20%, at or above the 0.1%" in result.message
    publish_rates(bounce=0.01, complaint=0.0, minutes_ago=1)
    assert run_mail_probes()["mail.W002"].status == "pass"


def test_without_a_host_or_voters_the_count_is_skipped(aws_env):
    result = run_mail_probes()["mail.E002"]
    assert result.status == "skip" and "--voters N" in result.hint


def test_the_production_access_request_is_filed_with_the_use_case_and_url(aws_env):
    deployment = Deployment(name="helios", domain="vote.example.org", email=SENDER)
    aws = AWS("us-east-1")
    use_case = "Invitations with voting credentials to the voters of our elections."
    with Stubber(aws.client("sesv2")) as stub:  # moto has neither call
        stub.add_response("get_account", {"ProductionAccessEnabled": False})
        stub.add_response("put_account_details", {}, {
            "MailType": "TRANSACTIONAL", "WebsiteURL": "https://vote.example.org",
            "ContactLanguage": "EN", "UseCaseDescription": use_case,
            "ProductionAccessEnabled": True})
        text = sending.request_production_access(aws, deployment, use_case)
        stub.assert_no_pending_responses()
    assert text.startswith("Asked AWS for production access to SES in us-east-1")


def test_the_request_refuses_without_a_use_case(tmp_path, aws_env):
    project = make_fixture_project(tmp_path, "requirements")
    configured = run_manage(project, "aws_configure", "--settings=helios_aws.settings_overrides"
                            ".production", "--domain", "vote.example.org", "--email", SENDER,
                            "--auth-systems", "password", "--no-input")
    assert configured.returncode == 0, configured.stderr
    result = run_manage(project, "aws_provision", "--settings=helios_aws.settings_overrides"
                        ".production", "--request-production-access")
    assert result.returncode != 0
    assert "--request-production-access needs --use-case" in result.stderr
    with pytest.raises(ConfigError, match="only with --request-production-access"):
        provision.production_access(Deployment(name="helios"), {"use_case": "x"})


COUNT = """
import datetime, json
from helios.models import Election, Voter
from helios_aws.probes import django_side

now = Election.utcnow()
hour = datetime.timedelta(hours=1)
# open: 3 voters; upcoming: 2; over: 5 (not counted); a draft: 4 (not counted).
for name, fields, voters in (
        ("open", {"frozen_at": now - hour, "voting_ends_at": now + hour}, 3),
        ("upcoming", {"voting_starts_at": now + hour}, 2),
        ("over", {"frozen_at": now - 3 * hour, "voting_ends_at": now - hour}, 5),
        ("draft", {}, 4)):
    election = Election.objects.create(short_name=name, name=name, **fields)
    for i in range(voters):
        Voter.objects.create(election=election, uuid=f"{name}-{i}",
                             voter_email=f"{name}{i}@example.net")
print(json.dumps(django_side.voters()))
"""


def test_the_voters_of_open_and_upcoming_elections_are_counted(tmp_path, postgres):
    project = make_fixture_project(tmp_path, "requirements")
    rig.run([rig.PG_BIN / "createdb", "helios_voters"], env=dict(os.environ, **postgres.env))
    socket_dir = str(postgres.socket_dir).replace("/", "%2F")
    env = helios_env(DATABASE_URL=f"postgres://postgres@{socket_dir}:{postgres.port}"
                                  "/helios_voters")
    migrated = run_manage(project, "migrate", "--no-input", env=env, timeout=300)
    assert migrated.returncode == 0, migrated.stderr

    result = run_manage(project, "shell", SETTINGS, "-c", COUNT, env=env, timeout=300)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"elections": 2, "voters": 5}
