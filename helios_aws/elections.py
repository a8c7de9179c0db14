"""The one definition of an open election, as Helios decides it, for every guard that
must not act while voters are voting.

Helios (``helios.models.Election``) says voting *has started* when the election is
frozen and ``voting_starts_at`` is unset or past (``voting_started_at``, when an
administrator forced the start, is the start that counts), and *has stopped* when
``voting_ended_at``, else ``voting_extended_until``, else ``voting_ends_at`` is past, or a
tally exists. Open = started and not stopped. ``archived_at`` hides an election from
lists but does not stop its voting, so an archived election can be open (it is reported
as archived). *Upcoming* = not started, not stopped, with a start time set: it opens by
itself (or on its freeze).

How the times are stored is the trap: Helios runs with ``USE_TZ = False`` and writes naive
UTC (``datetime.utcnow()``), while Django sets the database session's time zone to
Helios's ``TIME_ZONE`` (America/Los_Angeles unless changed), and the columns are
``timestamp with time zone``. PostgreSQL therefore takes the naive UTC value for a wall
clock time in ``TIME_ZONE``. ``col AT TIME ZONE '<TIME_ZONE>'`` gives back the naive UTC
Helios meant, compared here with ``now() AT TIME ZONE 'UTC'``. The zone is the
deployment's own (its Django connection's ``timezone_name``, passed down by the command
that has Helios's settings); it is never assumed.

Two ways in, one query: :func:`read` takes a ``query(sql) -> text`` callable (psql on the
host) and :func:`current` uses Django's connection. Either returns every election that is
open or upcoming, or raises :class:`ElectionsUnreadable`: a guard that cannot read never
reads "none open".
"""

import dataclasses
import datetime
import json
import re
import zoneinfo

from .errors import HeliosAWSError

OPEN, UPCOMING = "open", "upcoming"
TABLE = "helios_election"
# A time zone name goes into the SQL as a literal: only what IANA names are made of.
ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-/]{1,64}")
# 'present': the table is there. 'expected': Helios's migrations say it should be there and
# it is not. 'none': a database Helios's migrations never touched (no election can exist).
PRESENCE_SQL = (f"SELECT CASE WHEN to_regclass('{TABLE}') IS NOT NULL THEN 'present' "
                "WHEN to_regclass('django_migrations') IS NULL THEN 'none' "
                "ELSE 'check' END")
HELIOS_MIGRATED_SQL = "SELECT count(*) FROM django_migrations WHERE app = 'helios'"


class ElectionsUnreadable(HeliosAWSError):
    """Whether an election is open could not be decided: the guard refuses."""


@dataclasses.dataclass(frozen=True)
class Election:
    """One election that is open or upcoming; times are naive UTC, as Helios means them."""

    short_name: str
    state: str  # OPEN or UPCOMING
    starts_at: datetime.datetime | None  # the start that counts (None: opened on its freeze)
    closes_at: datetime.datetime | None  # None: open until an administrator closes it
    archived: bool

    @property
    def is_open(self):
        return self.state == OPEN


def _zone(time_zone):
    """``time_zone`` checked: a name PostgreSQL and Python both know, safe as a literal."""
    if not time_zone or not ZONE_NAME.fullmatch(str(time_zone)):
        raise ElectionsUnreadable(
            f"Cannot tell which elections are open: Helios's time zone is "
            f"{'unknown' if not time_zone else repr(time_zone)}, and the stored times "
            "mean nothing without it.",
            "Run this through manage.py with the deployment's settings (TIME_ZONE).")
    try:
        zoneinfo.ZoneInfo(time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ElectionsUnreadable(
            f"Cannot tell which elections are open: Helios's TIME_ZONE {time_zone!r} is not "
            "a time zone this machine knows.", "Fix TIME_ZONE in Helios's settings.")
    return time_zone


def sql(time_zone):
    """The query: one line of JSON, a list of the open and upcoming elections."""
    zone = _zone(time_zone)

    def utc(column):
        return f"({column} AT TIME ZONE '{zone}')"

    return f"""
WITH e AS (
  SELECT short_name, frozen_at IS NOT NULL AS frozen,
         {utc('voting_starts_at')} AS scheduled,
         coalesce({utc('voting_started_at')}, {utc('voting_starts_at')}) AS starts,
         coalesce({utc('voting_ended_at')}, {utc('voting_extended_until')},
                  {utc('voting_ends_at')}) AS ends,
         encrypted_tally IS NOT NULL AS tallied, archived_at IS NOT NULL AS archived,
         (now() AT TIME ZONE 'UTC') AS now
  FROM {TABLE}
), s AS (
  SELECT *, frozen AND (scheduled IS NULL OR starts <= now) AS started,
         (ends IS NOT NULL AND ends <= now) OR tallied AS stopped
  FROM e
)
SELECT coalesce(json_agg(json_build_object(
         'short_name', short_name,
         'state', CASE WHEN started THEN '{OPEN}' ELSE '{UPCOMING}' END,
         'starts_at', CASE WHEN scheduled IS NULL THEN NULL ELSE starts END,
         'closes_at', ends, 'archived', archived) ORDER BY short_name)::text, '[]')
FROM s WHERE NOT stopped AND (started OR starts IS NOT NULL)
"""


def _time(text):
    return datetime.datetime.fromisoformat(text) if text else None


def _parse(text):
    try:
        rows = json.loads(text)
        return [Election(short_name=row["short_name"], state=row["state"],
                         starts_at=_time(row["starts_at"]), closes_at=_time(row["closes_at"]),
                         archived=bool(row["archived"])) for row in rows]
    except (ValueError, TypeError, KeyError) as exc:
        raise ElectionsUnreadable(
            f"Cannot tell which elections are open: the database's answer was not understood "
            f"({exc}).", "Look at the helios_election table; nothing was changed.")


def read(query, time_zone):
    """Open and upcoming elections, through ``query(sql) -> text`` (e.g. psql's unaligned
    output); ElectionsUnreadable when that cannot be decided."""
    statement = sql(time_zone)
    try:
        presence = query(PRESENCE_SQL).strip()
        if presence == "check" and query(HELIOS_MIGRATED_SQL).strip() != "0":
            raise ElectionsUnreadable(
                f"Cannot tell which elections are open: the table {TABLE} is missing, "
                "although Helios's migrations are recorded as applied.",
                "Look at the database (a failed restore or migration?); nothing was changed.")
        if presence != "present":
            return []
        return _parse(query(statement).strip())
    except ElectionsUnreadable:
        raise
    except HeliosAWSError as exc:
        raise ElectionsUnreadable(
            f"Cannot tell which elections are open: reading {TABLE} failed: {exc.message}",
            "Make sure the database is reachable and try again; nothing was changed.") from exc


def current(connection=None):
    """Open and upcoming elections, read through Django's database connection (in the time
    zone that connection's session uses, which is Helios's TIME_ZONE)."""
    from django.db import DatabaseError, connection as default

    connection = connection or default

    def query(statement):
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement)
                return str(cursor.fetchone()[0])
        except DatabaseError as exc:
            raise HeliosAWSError(str(exc).strip()) from exc

    return read(query, connection.timezone_name)


def session_time_zone(settings=None):
    """The zone Django gives Helios's database session, from the settings alone (what
    ``connection.timezone_name`` answers, without connecting): ``TIME_ZONE`` when
    ``USE_TZ`` is off, as Helios runs, else the database's own TIME_ZONE or UTC."""
    if settings is None:
        from django.conf import settings
    if not settings.USE_TZ:
        return settings.TIME_ZONE
    return (settings.DATABASES.get("default") or {}).get("TIME_ZONE") or "UTC"


def open_now(elections):
    """The short names of the open ones among ``elections``."""
    return [e.short_name for e in elections if e.is_open]
