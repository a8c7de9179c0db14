"""Whether the SES account can mail an election's voters: its reputation (bounce and
complaint rates), how many voters today's quota still covers and how long they take at
the allowed rate, and the request that takes the account out of the sandbox.

Read by the plan (:mod:`helios_aws.aws.mail`), by ``aws_check`` (:mod:`helios_aws.probes.mail`)
and by ``aws_provision --request-production-access``; all run on the operator's machine.
"""

import datetime
import math

import botocore.exceptions

from ..errors import ConfigError
from .session import call, translate

# AWS reviews an account whose bounce rate reaches 5% or whose complaint rate reaches
# 0.1%, and may pause its sending at 10% and 0.5% (SES developer guide, "reputation
# metrics"). Warnings start at the review thresholds.
BOUNCE_REVIEW = 0.05
COMPLAINT_REVIEW = 0.001
# SES publishes both rates to CloudWatch under this namespace, as fractions.
NAMESPACE = "AWS/SES"
RATES = (("bounce", "Reputation.BounceRate", BOUNCE_REVIEW),
         ("complaint", "Reputation.ComplaintRate", COMPLAINT_REVIEW))
RATE_WINDOW = datetime.timedelta(days=2)
PERIOD = 300  # seconds: 576 points over the window, under CloudWatch's 1,440
USE_CASE_MIN, USE_CASE_MAX = 20, 5000  # what AWS accepts for UseCaseDescription


def reputation(aws):
    """{"bounce": fraction or None, "complaint": ...}: the latest value of each of the
    account's reputation metrics in the region (None: SES has published none, as for an
    account that has sent nothing)."""
    def fetch():
        cloudwatch = aws.client("cloudwatch")
        now = datetime.datetime.now(datetime.timezone.utc)
        # Both rates in one request (GetMetricData): a plan reads each thing once.
        queries = [{"Id": f"m{i}", "ReturnData": True, "MetricStat": {
            "Metric": {"Namespace": NAMESPACE, "MetricName": metric},
            "Period": PERIOD, "Stat": "Maximum"}} for i, (_, metric, _) in enumerate(RATES)]
        answer = call("read the SES bounce and complaint rates", cloudwatch.get_metric_data,
                      MetricDataQueries=queries, StartTime=now - RATE_WINDOW, EndTime=now,
                      ScanBy="TimestampDescending")
        results = {r["Id"]: r for r in answer["MetricDataResults"]}
        found = {}
        for i, (name, _, _) in enumerate(RATES):
            values = (results.get(f"m{i}") or {}).get("Values") or []
            found[name] = values[0] if values else None  # the newest first
        return found

    return aws.cached("ses_reputation", fetch)


def rate_problems(rates):
    """Sentences on the rates at or above AWS's review thresholds ([] when none)."""
    return [f"the {name} rate is {rates[name]:.2%}, at or above the {limit:.1%} at which "
            "AWS reviews the account (and may pause its sending)"
            for name, _, limit in RATES if rates.get(name) is not None and rates[name] >= limit]


def rates_text(rates):
    def shown(value):
        return "none published" if value is None else f"{value:.2%}"

    return ", ".join(f"{name} rate {shown(rates.get(name))}" for name, _, _ in RATES)


def quota(account, aws):
    """(Max24HourSend, MaxSendRate, SentLast24Hours, production access or None when
    unknown) from SES v2 GetAccount, else from SES v1 GetSendQuota."""
    if "unknown" not in account:
        send = account.get("SendQuota") or {}
        return (send.get("Max24HourSend", 0.0), send.get("MaxSendRate", 0.0),
                send.get("SentLast24Hours", 0.0), bool(account.get("ProductionAccessEnabled")))
    with translate("read the SES sending quota"):
        send = aws.client("ses").get_send_quota()
    return send["Max24HourSend"], send["MaxSendRate"], send["SentLast24Hours"], None


def duration(seconds):
    seconds = math.ceil(seconds)
    if seconds < 600:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def capacity(voters, max_24h, max_rate, sent):
    """(fits today, sentence): whether ``voters`` messages fit what is left of the 24-hour
    quota, and how long they take at ``max_rate`` a second."""
    left = max(max_24h - sent, 0)
    time_needed = duration(voters / max_rate) if max_rate > 0 else "forever (rate 0)"
    text = (f"{voters} voter(s) to mail; {left:g} of {max_24h:g} messages left in the "
            f"24-hour quota ({sent:g} sent); at {max_rate:g} a second they take "
            f"{time_needed}")
    return voters <= left and max_rate > 0, text


def production_request(deployment, use_case):
    """The PutAccountDetails parameters that ask AWS for production access."""
    text = " ".join((use_case or "").split())
    if not USE_CASE_MIN <= len(text) <= USE_CASE_MAX:
        raise ConfigError(
            "--request-production-access needs --use-case: a description of the mail the "
            f"site sends, {USE_CASE_MIN} to {USE_CASE_MAX} characters (AWS reads it).",
            "e.g. --use-case 'Invitations with voting credentials to the registered "
            "voters of our elections, from a Helios voting server; voters are listed by "
            "the election's administrators; bounces are removed before each election.'")
    return {"MailType": "TRANSACTIONAL", "WebsiteURL": deployment.url,
            "ContactLanguage": "EN", "UseCaseDescription": text,
            "ProductionAccessEnabled": True}


def request_production_access(aws, deployment, use_case, plan=False):
    """File (or with ``plan``, describe) the request to leave the SES sandbox; returns
    what was done, as a sentence."""
    request = production_request(deployment, use_case)
    where = f"SES in {aws.region}"
    if plan:
        return (f"Would ask AWS for production access to {where} for {request['WebsiteURL']} "
                "(transactional mail). Plan only: nothing was changed.")
    sesv2 = aws.client("sesv2")
    try:
        account = sesv2.get_account()
    except botocore.exceptions.ClientError:
        account = {}
    if account.get("ProductionAccessEnabled"):
        return f"{where} already has production access: nothing was requested."
    call(f"request production access to {where}", sesv2.put_account_details, **request)
    return (f"Asked AWS for production access to {where} for {request['WebsiteURL']}. AWS "
            "answers by mail to the account's contact, usually within a day; aws_check "
            "(aws.W001) says when it is granted.")
