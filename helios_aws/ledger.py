"""Reading the mail ledger (:class:`helios_aws.models.MailEvent`): the addresses that did
not get their mail, for an election or a time range, so that an administrator can correct
them and resend from Helios. Runs where the deployment's database is (``manage.py
aws_mail`` on the host, in Helios's settings).
"""

import csv
import datetime
import io

from .errors import ConfigError

COLUMNS = ("occurred_at", "address", "kind", "reason", "election_uuid", "message_id")


def _time(text, flag):
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a date or time.",
                          "Give it as 2026-05-01 or 2026-05-01T18:00 (UTC).")
    if value.tzinfo is not None:
        value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return value


def election_uuid(election):
    """The uuid of the election named by its short name or uuid; ConfigError if none."""
    from django.db import DatabaseError, connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT uuid::text FROM helios_election "
                           "WHERE short_name = %s OR uuid::text = %s", [election, election])
            row = cursor.fetchone()
    except DatabaseError as exc:
        raise ConfigError(f"The elections could not be read: {str(exc).strip()}",
                          "Run this on the host, where Helios's database is.")
    if row is None:
        raise ConfigError(f"No election has the short name or uuid {election!r}.",
                          "Give the short name in the election's URL (/helios/e/NAME).")
    return row[0]


def undelivered(election=None, since=None, until=None):
    """Ledger rows (dicts of COLUMNS, oldest first) for ``election`` (short name or uuid)
    and between ``since`` and ``until`` (ISO text, UTC)."""
    from django.conf import settings

    from .models import MailEvent

    events = MailEvent.objects.order_by("occurred_at", "address")
    if election:
        events = events.filter(election_uuid=election_uuid(election))
    for flag, text, lookup in (("--since", since, "occurred_at__gte"),
                               ("--until", until, "occurred_at__lt")):
        if text:
            value = _time(text, flag)
            if settings.USE_TZ:
                value = value.replace(tzinfo=datetime.timezone.utc)
            events = events.filter(**{lookup: value})
    return [{column: getattr(event, column) for column in COLUMNS} for event in events]


def as_csv(rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(dict(row, occurred_at=row["occurred_at"].isoformat(sep=" ")))
    return out.getvalue()


def as_text(rows):
    if not rows:
        return ["No undelivered mail recorded."]
    return [f"{row['occurred_at']:%Y-%m-%d %H:%M:%S}  {row['address']}  {row['kind']}  "
            f"{row['reason']}" for row in rows] + [f"{len(rows)} undelivered."]
