"""Mail probes that read SES from the operator's machine: the account's reputation, and
whether the voters of the open and upcoming elections can be mailed within today's quota.

The voters are counted on the host, in the deployment's database (one Django process
shared with the other host probes, :mod:`.django_side`), unless ``--voters N`` says how
many there will be.
"""

from ..aws import sending
from ..aws.mail import sending_account
from ..aws.session import translate
from ..errors import AWSError
from . import host
from .aws import session
from .base import Skip, failed, passed, probe, warned


@probe("mail.W002", "SES bounce and complaint rates are under AWS's review thresholds "
       f"({sending.BOUNCE_REVIEW:.0%}, {sending.COMPLAINT_REVIEW:.1%})",
       "Remove the addresses that bounce or complain from the voter lists before mailing; "
       "the SES console's reputation dashboard says what AWS sees.")
def ses_reputation(ctx):
    view = session(ctx)
    try:
        rates = sending.reputation(view.aws)
    except AWSError as exc:
        raise Skip(f"The rates could not be read: {exc.message}", exc.hint)
    problems = sending.rate_problems(rates)
    if problems:
        return failed("; ".join(p[0].upper() + p[1:] for p in problems) + ".")
    return passed(f"SES in {view.aws.region}: {sending.rates_text(rates)}.")


def _voters(ctx):
    """(count, where from) of the voters to mail."""
    if ctx.voters is not None:
        return ctx.voters, "given by --voters"
    try:
        ctx.ssh()
    except Skip:
        raise Skip("No host to count the voters on, and no --voters N.",
                   "Give --voters N, the size of the electorate to mail.")
    answer, problem = host._answer(ctx, "voters")
    if problem:
        raise Skip(f"The voters could not be counted on the host: {problem.message}",
                   "Give --voters N, or fix what host.E005/E007 report.")
    return answer["voters"], (f"in the {answer['elections']} open or upcoming election(s) "
                              "of the deployment's database")


@probe("mail.E002", "The voters to mail fit in today's SES quota",
       "Ask AWS for a higher sending quota (Service Quotas, or the SES console) before the "
       "invitations go out, or mail the electorate over several days.",
       timeout=host.DJANGO_PROBE_SECONDS, needs=host.DJANGO_PROBE_SECONDS)
def voters_fit_quota(ctx):
    voters, source = _voters(ctx)
    view = session(ctx)
    account = sending_account(view)
    with translate("read the SES sending quota"):
        max_24h, max_rate, sent, production = sending.quota(account, view.aws)
    fits, text = sending.capacity(voters, max_24h, max_rate, sent)
    text = f"{text} ({voters} {source})."
    if production is False and voters:
        return failed(f"SES is in the sandbox: voters get no mail. {text}",
                      "aws_provision --request-production-access --use-case TEXT")
    if not fits:
        return failed(f"Today's quota cannot take them: {text}")
    if account.get("SendingEnabled") is False:
        return warned(f"Sending is paused for the account (aws.W001). {text}")
    return passed(text[0].upper() + text[1:])


@probe("mail.W003", "No mail to the voters of the open elections is recorded as undelivered",
       "On the host, `manage.py aws_mail --election NAME` lists the addresses and why; "
       "correct them in Helios and resend.",
       timeout=host.DJANGO_PROBE_SECONDS, needs=host.DJANGO_PROBE_SECONDS)
def undelivered_mail(ctx):
    try:
        ctx.ssh()
    except Skip:
        raise Skip("No host: the mail ledger is in the deployment's database.")
    answer, problem = host._answer(ctx, "undelivered")
    if problem:
        return problem
    counts = answer["by_kind"]
    if not answer["elections"]:
        return passed("No election is open.")
    if not counts:
        return passed(f"Nothing undelivered in the {answer['elections']} open election(s).")
    found = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    return failed(f"Undelivered mail in the {answer['elections']} open election(s): {found}.")
