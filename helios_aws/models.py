"""The mail ledger: what became of voters' mail that did not arrive, in the deployment's
own database, so that an administrator can correct the addresses and resend from Helios.

One row per event: a send that finally failed (written by :mod:`helios_aws.mailer` in the
process that tried), and the bounces, complaints, rejects, rendering failures and delivery
delays SES reports later. Times are naive UTC, as Helios writes its own.
"""

from django.db import models


class MailEvent(models.Model):
    SEND_FAILURE = "send-failure"
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    REJECT = "reject"
    RENDERING_FAILURE = "rendering-failure"
    DELIVERY_DELAY = "delivery-delay"
    KINDS = [(SEND_FAILURE, "not accepted by SES"), (BOUNCE, "bounced"),
             (COMPLAINT, "complaint"), (REJECT, "rejected by SES"),
             (RENDERING_FAILURE, "template not rendered"),
             (DELIVERY_DELAY, "delivery delayed")]

    address = models.CharField(max_length=320)  # RFC 5321's longest path
    # The election the message was for, when it could be told (Helios's Election.uuid).
    election_uuid = models.CharField(max_length=50, blank=True, default="")
    kind = models.CharField(max_length=32, choices=KINDS)
    reason = models.TextField()
    occurred_at = models.DateTimeField()
    # SES's MessageId when SES accepted the message (bounces and complaints carry it).
    message_id = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        db_table = "helios_aws_mail_event"
        indexes = [models.Index(fields=["election_uuid", "occurred_at"]),
                   models.Index(fields=["occurred_at"]),
                   models.Index(fields=["address"])]

    def __str__(self):
        return f"{self.occurred_at:%Y-%m-%d %H:%M} {self.kind} {self.address}: {self.reason}"
