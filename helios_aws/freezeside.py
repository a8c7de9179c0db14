"""What root runs on the server for the election freeze (``python -I -m
helios_aws.freezeside ACTION``, started by :mod:`helios_aws.freeze` over SSH): read which
elections are open now, and write an audit record when an operator overrides the freeze.

Runs as root on the host, from root's own virtualenv (``/srv/helios/tools/helios-aws``,
never a release's), with an empty environment and Python in isolated mode. It reads only:

* its arguments, ``/var/lib/helios-aws/backup.json`` (root's: the bucket, the service
  user and Helios's time zone) and, for ``audit``, the record on its standard input,
  checked against :data:`helios_aws.records.AUDIT` before anything is written;
* the deployment's ``shared/.env``, read *as the service user* and parsed as data
  exactly as :mod:`helios_aws.rootside` does (only ``DATABASE_URL`` and the AWS
  allow-list are used).

It writes only the audit log (:data:`AUDIT_LOG`, root's directory, ``O_APPEND`` and
``O_NOFOLLOW``, mode 0600: the service user can neither read nor rewrite it) and one
object per record in the backup bucket under ``NAME/audit/`` (the instance role may put
there; the bucket's Object Lock keeps it).

``open`` prints one line of JSON: the open elections with their closing times (naive
UTC, as Helios means them), how many elections the database holds, and the .env's
``URL_HOST``/``SECURE_URL_HOST`` (the site's address, not a secret); or it exits 1 with
a sentence saying what could not be read, and the guard that calls it refuses.
``pending`` prints the elections past their end whose cast votes still wait to be
verified (for ``aws_check``; read only).
"""

import argparse
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path

from . import backup, elections, records, rootside
from .aws.session import call
from .errors import HeliosAWSError
from .freeze import URL_KEYS

AUDIT_LOG = "/var/lib/helios-aws/audit.jsonl"
AUDIT_FOLDER = "audit"


def _config(args):
    """backup.json; on a host without backups (no bucket, so no backup.json), what the
    operator's side passed: Helios's time zone and the service user (the audit record
    then stays on the host)."""
    if not Path(args.config).exists() and getattr(args, "time_zone", ""):
        return backup.Config(bucket="", prefix="", region="",
                             service_user=args.service_user, time_zone=args.time_zone)
    return backup.Config.load(args.config)


def _load(args):
    config = _config(args)
    user = config.service_user if config.service_user not in ("", "root") else ""
    values = rootside.read_env(args.env_file, user)
    os.environ.clear()
    os.environ.update(rootside.clean_env(rootside.passed_on(values)))
    return config, rootside.database_of(values, user), {k: values.get(k, "") for k in URL_KEYS}


def count_elections(db):
    """How many elections the database holds (any state: each one's fingerprint holds the
    cast URL); ElectionsUnreadable when that cannot be told."""
    try:
        presence = db.query(elections.PRESENCE_SQL).strip()
        if presence == "check" and db.query(elections.HELIOS_MIGRATED_SQL).strip() != "0":
            raise elections.ElectionsUnreadable(
                f"Cannot count the elections: the table {elections.TABLE} is missing, "
                "although Helios's migrations are recorded as applied.",
                "Look at the database; nothing was changed.")
        if presence != "present":
            return 0
        return int(db.query(f"SELECT count(*) FROM {elections.TABLE}").strip())
    except elections.ElectionsUnreadable:
        raise
    except (HeliosAWSError, ValueError) as exc:
        raise elections.ElectionsUnreadable(
            f"Cannot count the elections: {getattr(exc, 'message', exc)}",
            "Make sure the database is reachable and try again; nothing was changed.")


def open_elections(config, db):
    """The open elections (elections.py's definition, in Helios's time zone as
    backup.json records it); ElectionsUnreadable when that cannot be decided."""
    return [e for e in elections.read(db.query, config.time_zone) if e.is_open]


def open_now(config, db):
    """[(short name, closes_at ISO text or None)] of the open elections."""
    return [(e.short_name, e.closes_at.isoformat() if e.closes_at else None)
            for e in open_elections(config, db)]


def pending_sql(time_zone):
    """One line of JSON: each election past its end, not tallied, with cast votes still
    in Helios's verification queue (``helios_castvote``: neither verified nor
    invalidated). Times are undone from Helios's zone as in elections.py."""
    zone = elections._zone(time_zone)

    def utc(column):
        return f"(e.{column} AT TIME ZONE '{zone}')"

    return f"""
SELECT coalesce(json_agg(json_build_object('short_name', short_name, 'ended_at', ends,
                                           'pending', pending) ORDER BY short_name)::text,
                '[]')
FROM (
  SELECT e.short_name, coalesce({utc('voting_ended_at')}, {utc('voting_extended_until')},
                                {utc('voting_ends_at')}) AS ends, count(*) AS pending
  FROM {elections.TABLE} e JOIN helios_voter v ON v.election_id = e.id
       JOIN helios_castvote c ON c.voter_id = v.id
  WHERE c.verified_at IS NULL AND c.invalidated_at IS NULL AND e.encrypted_tally IS NULL
  GROUP BY e.id, e.short_name, e.voting_ended_at, e.voting_extended_until, e.voting_ends_at
) s
WHERE ends IS NOT NULL AND ends <= (now() AT TIME ZONE 'UTC')
"""


def pending_votes(config, db):
    """[{short_name, ended_at, pending}] (see :func:`pending_sql`); ElectionsUnreadable
    when it cannot be read."""
    statement = pending_sql(config.time_zone)
    if not count_elections(db):
        return []
    try:
        return json.loads(db.query(statement).strip())
    except (HeliosAWSError, ValueError) as exc:
        raise elections.ElectionsUnreadable(
            f"Cannot read the votes waiting to be verified: {getattr(exc, 'message', exc)}",
            "Make sure the database is reachable and try again.")


def audit_key(config, record):
    stamp = record["at"].replace("-", "").replace(":", "").split(".")[0]
    return f"{config.prefix}/{AUDIT_FOLDER}/{stamp}-{secrets.token_hex(4)}.json"


def write_audit(config, record, log_path):
    """Append ``record`` to the host's audit log, then put it in the bucket; returns the
    object's key. Either failing raises: a change is never made unrecorded."""
    line = json.dumps(record, sort_keys=True)
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if not config.bucket:
        return None  # no backup bucket: the host's log is the record
    key = audit_key(config, record)
    body = (line + "\n").encode()
    call(f"put the audit record s3://{config.bucket}/{key}", config.s3().put_object,
         Bucket=config.bucket, Key=key, Body=body, ContentType="application/json",
         ServerSideEncryption="AES256", ChecksumAlgorithm="SHA256")
    return key


def arguments(argv):
    parser = argparse.ArgumentParser(prog="python -I -m helios_aws.freezeside")
    parser.add_argument("action", choices=("open", "audit", "pending"))
    parser.add_argument("--config", default=backup.CONFIG_PATH)
    parser.add_argument("--env-file", required=True)
    parser.add_argument("--log", default=AUDIT_LOG)
    parser.add_argument("--time-zone", default="")
    parser.add_argument("--service-user", default="")
    return parser.parse_args(argv)


def main(argv=None):
    args = arguments(sys.argv[1:] if argv is None else argv)
    try:
        config, db, urls = _load(args)
        if args.action == "open":
            sys.stdout.write(json.dumps({
                "open": [{"short_name": name, "closes_at": closes}
                         for name, closes in open_now(config, db)],
                "elections": count_elections(db), "url_hosts": urls}) + "\n")
            return 0
        if args.action == "pending":
            sys.stdout.write(json.dumps(pending_votes(config, db)) + "\n")
            return 0
        text = sys.stdin.read()
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise HeliosAWSError(f"The audit record is not JSON ({exc}).",
                                 "Nothing was written.")
        records.check(record, records.AUDIT, "the audit record", "Nothing was written.",
                      HeliosAWSError)
        record["sha256_of_previous"] = _previous_digest(args.log)
        key = write_audit(config, record, args.log)
        sys.stdout.write(f"audit record written to {args.log}"
                         + (f" and s3://{config.bucket}/{key}\n" if key else
                            " (the deployment has no backup bucket)\n"))
        return 0
    except HeliosAWSError as exc:
        sys.stderr.write(f"{exc.message}\n{exc.hint}\n" if exc.hint else f"{exc.message}\n")
        return 1


def _previous_digest(log_path):
    """The digest of the log's last line (None for the first record): each record names
    the one before it, so a line removed from the host's log shows."""
    try:
        fd = os.open(log_path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as log:
        lines = log.read().splitlines()
    return hashlib.sha256(lines[-1]).hexdigest() if lines else None


if __name__ == "__main__":
    sys.exit(main())
