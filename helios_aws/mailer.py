"""Helios's mail backend on the server: django-ses, paced and retried, with every message
that finally fails recorded in the mail ledger (:class:`helios_aws.models.MailEvent`).

Runs in every Helios process that sends (the Celery worker sending invitations, the web
processes sending one-off mail), as the service user; the overlay selects it in place of
``django_ses.SESBackend`` when ``EMAIL_USE_AWS=1``.

Why a backend and not Celery task annotations: Helios sends from the worker *and* from
web requests, and only a backend sees both. A backend also knows what SES answered to
each message, so it can tell a refusal (safe to retry) from a send whose fate is unknown
(never retried), which a task retry cannot: retrying Helios's task would send again every
message the task had already sent.

Pacing is a token bucket shared by every process through one small file under ``flock``
(``HELIOS_AWS_MAIL_PACE_FILE``, by default ``mail-pace`` beside the deployment's .env,
in ``shared/``, which the units may write). The file holds the next free sending slot; a
sender takes the slot under the lock and sleeps until it comes. A file rather than a
database row: taking a slot is a few microseconds under a lock the kernel drops when a
process dies, it costs no transaction or connection per message, and a slow database
(a migration, a backup) never holds up the mail. The deployment is one host, so one file
is seen by every sender.

The rate is the account's ``MaxSendRate`` (SES ``GetSendQuota``, read at most once an
hour by whichever process finds the file's copy stale), or ``HELIOS_AWS_MAIL_RATE``;
the pace keeps 5% under it.

Retries: botocore's own are switched off for the sending client, because botocore
retries a read timeout too, when SES may have accepted the message already. Here a send
is retried only when SES refused it (throttling, a 5xx answer) or when no connection was
made, with exponential backoff and jitter up to ``HELIOS_AWS_MAIL_ATTEMPTS`` tries (about
two minutes by default, as AWS advises waiting up to minutes). A message is never sent
twice: any other failure, including a lost answer, is recorded, not retried.
"""

import datetime
import fcntl
import json
import logging
import os
import random
import re
import time
from pathlib import Path

import botocore.config
import botocore.exceptions
from django.conf import settings
from django_ses import SESBackend

logger = logging.getLogger("helios_aws.mail")

DEFAULT_ATTEMPTS = 8
DEFAULT_BACKOFF = 1.0  # seconds before the first retry; doubled each time
MAX_BACKOFF = 60.0
RATE_REFRESH = 3600.0  # seconds a MaxSendRate read from SES is used before it is read again
# The share of the rate the pace uses: messages leave at even intervals, but network and
# scheduling jitter bunch them on the way, and SES judges them as they arrive.
PACE_SHARE = 0.95
FALLBACK_RATE = 1.0  # SES's lowest MaxSendRate (the sandbox's), when the quota cannot be read
# SES refused the message (nothing was sent): worth another try after a wait.
RETRY_CODES = {"Throttling", "ThrottlingException", "TooManyRequestsException",
               "ServiceUnavailable", "ServiceUnavailableException", "InternalFailure",
               "RequestTimeout", "RequestTimeoutException"}
# Throttling that waiting minutes does not end.
DAILY_QUOTA = "daily message quota exceeded"
# No connection was made: nothing reached SES.
UNSENT_ERRORS = (botocore.exceptions.EndpointConnectionError,
                 botocore.exceptions.ConnectTimeoutError)
# The error details django-ses stores on a message as if they were headers.
DJANGO_SES_ERROR_KEYS = ("status", "reason", "body", "request_id", "error_code",
                         "error_message")
_CLIENTS = {}  # (pid, region, endpoint, key id, v2) -> the sending client of this process
ELECTION_UUID = re.compile(r"/helios/elections/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-"
                           r"[0-9a-f]{4}-[0-9a-f]{12})")
ELECTION_SHORT_NAME = re.compile(r"/helios/e/([\w-]{1,100})")


def _setting(name, default, cast):
    value = getattr(settings, name, None)
    if value in (None, ""):
        value = os.environ.get(name, "")
    return cast(value) if value not in (None, "") else default


def pace_file():
    explicit = _setting("HELIOS_AWS_MAIL_PACE_FILE", "", str)
    if explicit:
        return Path(explicit)
    env_file = getattr(settings, "HELIOS_AWS_ENV_FILE", "") or os.environ.get(
        "HELIOS_ENV_FILE", "")
    return Path(env_file).parent / "mail-pace" if env_file else Path("mail-pace")


class Pace:
    """The shared token bucket: ``take()`` returns when this process may send one message."""

    def __init__(self, path, read_rate, fixed_rate=None):
        self.path = Path(path)
        self.read_rate = read_rate  # () -> MaxSendRate from SES
        self.fixed_rate = fixed_rate
        self._alone = {}  # the state of a process pacing itself alone

    def _rate(self, state, now):
        if self.fixed_rate:
            return self.fixed_rate
        if state.get("rate") and now - state.get("rate_at", 0) < RATE_REFRESH:
            return state["rate"]
        try:
            rate = float(self.read_rate())
        except Exception as exc:  # any failure to read leaves the slowest safe rate
            logger.warning("SES's sending rate could not be read (%s); sending at %g a "
                           "second.", exc, FALLBACK_RATE)
            rate = state.get("rate") or FALLBACK_RATE
        state.update(rate=rate, rate_at=now)
        return rate

    def take(self):
        if self.path is None:
            return self._take_alone()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            # Mail must not stop because the file cannot be opened (made by another
            # user, a read-only directory): this process then paces itself alone.
            logger.warning("The mail pace file %s cannot be opened (%s): this process "
                           "paces its own mail only.", self.path, exc.strerror)
            self.path = None
            return self._take_alone()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.read(fd, 4096)
            try:
                state = json.loads(raw) if raw else {}
            except ValueError:
                state = {}  # a file cut short by a crash: start afresh
            slot = self._next_slot(state)
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(state).encode())
        finally:
            os.close(fd)  # drops the lock
        self._wait(slot)

    def _take_alone(self):
        self._wait(self._next_slot(self._alone))

    def _next_slot(self, state):
        """The time of the next free slot; ``state`` is moved on past it."""
        now = time.time()
        rate = self._rate(state, now)
        slot = max(float(state.get("next", 0)), now)
        state["next"] = slot + 1.0 / (rate * PACE_SHARE)
        return slot

    @staticmethod
    def _wait(slot):
        delay = slot - time.time()
        if delay > 0:
            time.sleep(delay)


def now_utc():
    """Now, as Helios stores its times: naive UTC when USE_TZ is off."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now if settings.USE_TZ else now.replace(tzinfo=None)


def election_of(message):
    """The uuid of the election ``message`` is about, when its body names one ("")."""
    body = message.body if isinstance(message.body, str) else ""
    found = ELECTION_UUID.search(body)
    if found:
        return found.group(1)
    found = ELECTION_SHORT_NAME.search(body)
    if not found:
        return ""
    try:
        from django.db import connection
        with connection.cursor() as cursor:
            cursor.execute("SELECT uuid FROM helios_election WHERE short_name = %s",
                           [found.group(1)])
            row = cursor.fetchone()
        return str(row[0]) if row else ""
    except Exception:  # no Helios table here: the election stays unknown
        return ""


def record_failure(message, reason):
    """One ledger row per recipient of ``message``, which SES did not take."""
    from .models import MailEvent

    election = election_of(message)
    when = now_utc()
    try:
        MailEvent.objects.bulk_create([
            MailEvent(address=address, election_uuid=election, kind=MailEvent.SEND_FAILURE,
                      reason=reason[:2000], occurred_at=when)
            for address in message.recipients()])
    except Exception:
        logger.exception("The failure to mail %s could not be recorded in the mail ledger.",
                         ", ".join(message.recipients()))


def _retryable(exc):
    """(whether SES surely did not take the message, why it failed, in a sentence)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code, text = error.get("Code", ""), error.get("Message", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        reason = f"{code}: {text}" if text else code or f"HTTP {status}"
        if DAILY_QUOTA in text.lower():
            return False, reason
        return code in RETRY_CODES or status >= 500, reason
    if isinstance(exc, UNSENT_ERRORS):
        return True, f"{type(exc).__name__}: {exc}"
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return False, f"{type(exc).__name__}: {exc} (SES may have sent it: not retried)"
    return False, f"{type(exc).__name__}: {exc}"


class PacedSESBackend(SESBackend):
    """django-ses, sending one message at a time under the shared pace, retrying what SES
    refused, and recording what finally failed."""

    def __init__(self, fail_silently=False, **kwargs):
        # botocore must not retry a send on its own (see the module docstring).
        kwargs.setdefault("aws_config", botocore.config.Config(
            retries={"total_max_attempts": 1, "mode": "standard"}))
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.attempts = _setting("HELIOS_AWS_MAIL_ATTEMPTS", DEFAULT_ATTEMPTS, int)
        self.backoff = _setting("HELIOS_AWS_MAIL_BACKOFF", DEFAULT_BACKOFF, float)
        self.pace = Pace(pace_file(), self._read_rate,
                         _setting("HELIOS_AWS_MAIL_RATE", None, float))

    def open(self):
        """django-ses builds a boto3 session and client for every backend, and Django
        makes a backend for every ``send_mail`` (Helios's worker: one per voter), which
        costs more than a message's turn at a high rate. One client per process and
        configuration serves them all (boto3 clients are thread-safe, and the instance
        role's credentials refresh inside it)."""
        if self.connection:
            return False
        key = (os.getpid(), self._region_name, self._endpoint_url, self._access_key_id,
               self._use_ses_v2)
        client = _CLIENTS.get(key)
        if client is None:
            super().open()
            if self.connection is not None:
                _CLIENTS[key] = self.connection
        else:
            self.connection = client
        return None

    def _read_rate(self):
        self.open()
        if self._use_ses_v2:
            return self.connection.get_account()["SendQuota"]["MaxSendRate"]
        return self.connection.get_send_quota()["MaxSendRate"]

    def send_messages(self, email_messages):
        if not email_messages:
            return 0
        sent, first_failure = 0, None
        opened = self.connection is None
        try:
            for message in email_messages:
                try:
                    sent += self._send_one(message)
                except Exception as exc:
                    first_failure = first_failure or exc
        finally:
            if opened:
                self.close()
        if first_failure is not None and not self.fail_silently:
            raise first_failure
        return sent

    def _send_one(self, message):
        quiet, self.fail_silently = self.fail_silently, False
        try:
            for attempt in range(1, self.attempts + 1):
                self.pace.take()
                try:
                    return super().send_messages([message]) or 0
                except Exception as exc:
                    for key in DJANGO_SES_ERROR_KEYS:  # not headers of the next try
                        message.extra_headers.pop(key, None)
                    retry, reason = _retryable(exc)
                    if retry and attempt < self.attempts:
                        delay = min(MAX_BACKOFF, self.backoff * 2 ** (attempt - 1))
                        delay = delay / 2 + random.uniform(0, delay / 2)
                        logger.info("SES refused mail to %s (%s); try %d of %d in %.1f s.",
                                    ", ".join(message.recipients()), reason, attempt + 1,
                                    self.attempts, delay)
                        time.sleep(delay)
                        continue
                    tries = f" after {attempt} tries" if attempt > 1 else ""
                    logger.error("Mail to %s failed%s: %s", ", ".join(message.recipients()),
                                 tries, reason)
                    record_failure(message, f"{reason}{tries}")
                    raise
        finally:
            self.fail_silently = quiet
        return 0
