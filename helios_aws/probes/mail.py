"""The test e-mail: one real message through the deployment's mail configuration.

It is sent with Django's mail API and the settings of this process (the deployment's,
see :mod:`helios_aws.probes.config`), so it takes the path Helios's own mail takes:
django-ses and the AWS credential chain. django-ses records SES's message id on the
message, which the report shows, so the message can be traced in SES.
"""

from .base import Skip, failed, passed, probe


@probe("mail.E001", "A test e-mail is accepted by the deployed mail configuration",
       "Verify the sender (DEFAULT_FROM_EMAIL) in SES; while the account is in the SES "
       "sandbox the recipient must be verified too (see aws.W001).", timeout=30)
def send_test_email(ctx):
    from django.conf import settings
    from django.core.mail import EmailMessage

    if not ctx.test_email:
        raise Skip("No --send-test-email address was given.")
    sender = settings.DEFAULT_FROM_EMAIL
    message = EmailMessage(
        subject="helios-aws test message",
        body="This message was sent by `manage.py aws_check --send-test-email` to test the "
             f"mail configuration of the Helios server at {settings.URL_HOST}.\n",
        from_email=sender,
        to=[ctx.test_email],
    )
    try:
        message.send(fail_silently=False)
    except Exception as exc:  # botocore, smtplib and socket errors all mean "not sent"
        detail = getattr(exc, "response", {}).get("Error", {}).get("Message") or str(exc)
        return failed(f"Sending from {sender} to {ctx.test_email} failed: "
                      f"{type(exc).__name__}: {detail}")
    message_id = message.extra_headers.get("message_id")
    backend = settings.EMAIL_BACKEND.rsplit(".", 1)[0]
    if message_id:
        return passed(f"Sent from {sender} to {ctx.test_email} through {backend}; SES "
                      f"message id {message_id}.")
    return passed(f"Sent from {sender} to {ctx.test_email} through {backend} (no SES "
                  "message id: mail does not go through SES).")
