"""What root runs on the server for a drill and a restore into production
(``python -I -m helios_aws.rootside``, started by ``aws_restore`` over SSH), and the
rules that keep the service user from steering it.

Runs as root on the host. It reads only:

* its arguments and ``/var/lib/helios-aws/backup.json`` (root's, written by
  ``aws_provision``);
* the deployment's ``config/.env``, read *as the service user* (``runuser ... cat``, so a
  link planted there shows only what that user may read) and parsed as data: of its
  lines only :data:`DATABASE_VARIABLE` (split into libpq's parameters) and
  :data:`PASSED_ON` are used, nothing else reaches this process or a program it starts;
* its own code, from root's own virtualenv ``/srv/helios/tools/helios-aws``
  (``host.system.RootTool``: installed by root from wheels only, never from a release,
  which the service user builds); ``-I`` keeps Python from reading ``PYTHON*``
  variables, the user's site directory or the working directory.

Every program it starts gets :func:`clean_env`: a fixed ``PATH``, ``LANG`` and the
allow-listed values, never the caller's environment. Everything under the service
user's directories (``shared/``: the media directories) is done *as the service user*
through ``runuser`` with that clean environment: making the new media directory,
extracting the archive into it (GNU tar, no owners), renaming and removing. Root opens
no path there, so no link planted there can lead root elsewhere.

A restore into production is whole or not at all (:func:`restore`): the backup goes into
a new database and a new media directory; only once the restore and its checks passed
are the services stopped, the databases swapped by name in one transaction, the media
directories renamed, migrations applied, and the services started. The journal
(:data:`JOURNAL`, root's) records each phase; :func:`recover` reads it after any
interruption (the worker killed, Ctrl-C, the SSH connection lost) and finishes the
switch or undoes it, so that the server ends with the old database serving or the new
one complete, and the services running. The previous database and media directory are
kept, under the names the outcome gives, until the next successful restore removes
them or the operator does.
"""

import argparse
import dataclasses
import datetime
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

from . import backup
from .errors import HeliosAWSError

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DATABASE_VARIABLE = "DATABASE_URL"
# The .env's only variables that root passes on: a local rehearsal's AWS endpoint and
# keys (on a real server the instance role provides credentials and these are absent).
PASSED_ON = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_DEFAULT_REGION")
DEFAULT_DATABASE = "helios"
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}")
JOURNAL = "/var/lib/helios-aws/restore.json"
PREPARING, SWITCHING, MIGRATING, DONE, UNDONE = (
    "preparing", "switching", "migrating", "done", "undone")


class RestoreError(backup.BackupError):
    """A restore stopped; the message says which database serves."""


# ------------------------------------------------------------------------- environment


def clean_env(extra=()):
    """The whole environment of a program root starts: nothing inherited."""
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": "/"}
    env.update(extra)
    return env


def as_user(user, argv):
    """``argv`` run as ``user`` (with the environment it is given), or as is when root
    is that user already (a test's or a rehearsal's layout)."""
    if not user or user == "root" or os.geteuid() != 0:
        return list(argv)
    return ["runuser", "-u", user, "--", *argv]


def parse_env(text):
    """{name: value} of ``KEY=VALUE`` lines (``export``, quotes and comments as
    django-environ reads them); other lines are ignored, nothing is expanded."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name.isidentifier():
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[name] = value
    return values


def read_env(path, user):
    """The .env's values, read as ``user`` (the file is that user's to write)."""
    result = subprocess.run(as_user(user, ["cat", "--", str(path)]), env=clean_env(),
                            capture_output=True, cwd="/", stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise backup.BackupError(
            f"Cannot read {path} as {user or 'root'}: "
            f"{result.stderr.decode(errors='replace').strip()}",
            "Run aws_provision again (it writes the .env).")
    return parse_env(result.stdout.decode(errors="replace"))


def database_of(values, user):
    """The production database as Helios reaches it: ``DATABASE_URL`` when set, else
    database ``helios`` over the unix socket as the service user (HELIOS.md)."""
    url = values.get(DATABASE_VARIABLE, "")
    if not url:
        return backup.Database(DEFAULT_DATABASE, run_as=user)
    parts = urllib.parse.urlsplit(url)
    name = urllib.parse.unquote(parts.path.lstrip("/"))
    role = urllib.parse.unquote(parts.username or "")
    # The names go into SQL run as PostgreSQL's superuser: plain identifiers only.
    if parts.scheme not in ("postgres", "postgresql", "pgsql") or not NAME_RE.fullmatch(
            name) or (role and not NAME_RE.fullmatch(role)):
        raise backup.BackupError(f"{DATABASE_VARIABLE} in the .env names no PostgreSQL "
                                 "database and role that root accepts (letters, digits and "
                                 "underscores).",
                                 "Fix it with aws_configure and aws_provision.")
    query = urllib.parse.parse_qs(parts.query)
    try:
        port = str(parts.port or "")
    except ValueError:
        port = ""
    where = parts.netloc.rpartition("@")[2]
    socket = "%2F" in where.upper()
    host = urllib.parse.unquote(where.rpartition(":")[0] if port else where) if socket \
        else parts.hostname or ""
    # Helios connects with ssl_require=True: over TCP, so does root.
    sslmode = (query.get("sslmode") or ["" if socket or not host else "require"])[0]
    return backup.Database(name, host=host, port=port, user=role,
                           password=urllib.parse.unquote(parts.password or ""),
                           sslmode=sslmode, run_as=user)


def passed_on(values):
    return {name: values[name] for name in PASSED_ON
            if values.get(name) and "\n" not in values[name]}


# ------------------------------------------------------------------------- host


@dataclasses.dataclass
class Host:
    """What root knows of the deployment on this host, all of it from root's files and
    arguments but the parsed .env values."""

    config: backup.Config
    db: backup.Database
    admin: backup.Database
    media: Path
    release: Path
    env_file: Path
    journal: Path
    migrate_settings: str = "helios_aws.settings_overrides.production"

    def as_user(self, *argv):
        return as_user(self.config.service_user, argv)

    def run_as_user(self, *argv, input=None):
        result = subprocess.run(self.as_user(*argv), env=clean_env(), cwd="/",
                                capture_output=True, text=True, input=input)
        if result.returncode != 0:
            raise backup.BackupError(f"{argv[0]} failed: {result.stderr.strip()[-2000:]}",
                                     "See the message above.")
        return result.stdout

    def exists(self, path):
        """Whether ``path`` exists, as the service user sees it (no link followed)."""
        return subprocess.run(self.as_user("test", "-e", str(path), "-o", "-L", str(path)),
                              env=clean_env(), cwd="/").returncode == 0

    def database_exists(self, name):
        return self.admin.query("SELECT count(*) FROM pg_database WHERE datname = "
                                f"'{name}'") == "1"


def load_host(args):
    config = backup.Config.load(args.config)
    user = config.service_user if config.service_user not in ("", "root") else ""
    values = read_env(args.env_file, user)
    os.environ.clear()
    os.environ.update(clean_env(passed_on(values)))
    db = dataclasses.replace(database_of(values, user), time_zone=config.time_zone)
    admin = db.other("postgres", run_as="postgres" if user else "")
    return Host(config=config, db=db, admin=admin, media=Path(args.media),
                release=Path(args.release), env_file=Path(args.env_file),
                journal=Path(args.journal))


# ------------------------------------------------------------------------- journal


JOURNAL_KEYS = ("backup", "database", "new_database", "previous_database", "media",
                "new_media", "previous_media", "phase")
PHASES = (PREPARING, SWITCHING, MIGRATING, DONE, UNDONE)


def read_journal(path):
    """The journal's record, checked (None when there is none): a record this module
    did not write stops the restore with a sentence, never guides it."""
    try:
        record = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        record, problem = None, str(exc)
    else:
        problem = "" if isinstance(record, dict) and all(
            isinstance(record.get(key), str) and record[key] for key in JOURNAL_KEYS) \
            and record["phase"] in PHASES else "not a restore's record"
    if problem:
        raise RestoreError(f"The restore journal {path} is damaged ({problem}).",
                           "Look at it, and at the databases and media directories it "
                           "names, before removing it.")
    return record


def write_journal(path, record):
    """Replace the journal atomically (root's directory, root's file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(staged, path)


def outcome(record):
    """One sentence saying which database serves, from a finished journal."""
    if record is None:
        return "No restore has run on this server."
    if record["phase"] == DONE:
        return (f"The restore of {record['backup']} is complete: its database serves as "
                f"{record['database']}. The previous database is kept as "
                f"{record['previous_database']} and the previous media as "
                f"{record['previous_media']}, until the next restore or until you remove "
                "them.")
    if record["phase"] == UNDONE:
        return (f"The restore of {record['backup']} did not happen: the database that "
                f"served before ({record['database']}) still serves, unchanged.")
    return (f"The restore of {record['backup']} was interrupted in phase "
            f"{record['phase']} and is not yet recovered.")


# ------------------------------------------------------------------------- restore


def _log(progress, text):
    if progress is not None:
        progress(text)


def _extract_media(host, download, target):
    """Extract the media archive into ``target``, a new directory, as the service user:
    GNU tar, owners and modes of the archive ignored; the download's checksum is checked
    at its end."""
    host.run_as_user("mkdir", "-m", "0750", "--", str(target))
    tar = subprocess.Popen(host.as_user("tar", "-x", "--no-same-owner",
                                        "--no-same-permissions", "-f", "-", "-C",
                                        str(target)),
                           env=clean_env(), cwd="/", stdin=subprocess.PIPE,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    errors = backup._Stderr(tar.stderr)
    try:
        try:
            backup._pump(download, tar.stdin)
        except BrokenPipeError:
            pass
        download.drain()
    finally:
        try:
            tar.stdin.close()
        except BrokenPipeError:
            pass
        status = tar.wait()
    if status != 0:
        raise backup.BackupError(f"Extracting the media failed (tar exit {status}): "
                                 f"{errors.result()}", "Choose another backup.")


def _rename_databases(host, *pairs):
    """Rename databases ``(old, new), ...`` in one transaction (all or none), after
    closing the sessions left on them (the services are stopped)."""
    names = ", ".join(f"'{name}'" for pair in pairs for name in pair)
    host.admin.query("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                     f"WHERE datname IN ({names}) AND pid <> pg_backend_pid()")
    host.admin.query("; ".join(f'ALTER DATABASE "{old}" RENAME TO "{new}"'
                               for old, new in pairs))


def _rename(host, source, target):
    host.run_as_user("mv", "-T", "--", str(source), str(target))


def restore(host, services, migrate, backup_name, force=False, progress=None, phase=None,
            object_version=None):
    """Restore ``backup_name`` into production, whole or not at all; returns the
    journal's last record. ``phase(name)`` is told each phase as it begins. With
    ``object_version``, the backup is the one that version of its manifest describes
    (the objects' versions it names), whatever was written over it since."""
    config, db = host.config, host.db
    s3 = config.s3()
    folder = backup.choose(config, backup_name, s3)
    manifest = backup.read_manifest(config, folder, s3, object_version)
    if object_version:
        _log(progress, f"restore {folder}: manifest version {object_version}")
    _log(progress, f"restore {folder} (taken {manifest['created_at']}) into database "
                   f"{db.name}")
    from . import freeze, freezeside

    found = freezeside.open_now(host.config, db)
    open_now = ", ".join(name for name, _ in found)
    if open_now and not force:
        raise RestoreError(
            f"Refusing to restore: election(s) open for voting now: {freeze.describe(found)}. "
            "A restore would lose the ballots cast since the backup.",
            'Wait until voting ends, or give --force --reason "..." if losing those ballots '
            "is intended (it is recorded).")
    if open_now:
        _log(progress, f"--force: restoring although {open_now} is open")
    _log(progress, f"checking the checksums of {folder}...")
    versions = {name: backup._verify(s3, config, manifest[name])
                for name in ("database", "media")}
    suffix = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S") + \
        "_" + secrets.token_hex(3)
    record = {
        "backup": folder, "pid": os.getpid(), "database": db.name,
        "new_database": f"{db.name}_restore_{suffix}",
        "previous_database": f"{db.name}_previous_{suffix}",
        "media": str(host.media), "new_media": f"{host.media}.restore-{suffix}",
        "previous_media": f"{host.media}.previous-{suffix}",
        "units": list(services.units), "phase": PREPARING, "services": "running",
    }
    write_journal(host.journal, record)

    def advance(name):
        record["phase"] = name
        write_journal(host.journal, record)
        if phase is not None:
            phase(name)

    try:
        return _restore_from(host, services, migrate, manifest, versions, record, advance,
                             progress, phase)
    except BaseException as exc:
        message = exc.message if isinstance(exc, HeliosAWSError) else (
            str(exc) or type(exc).__name__)
        _log(progress, f"restore {folder} stopped in phase {record['phase']} ({message})")
        finished = recover(host, services, progress)
        if finished["phase"] == DONE:
            raise RestoreError(f"Restore of {folder}: {message}. {outcome(finished)}",
                               "See the message above.") from exc
        raise RestoreError(f"Restore of {folder} failed: {message}. Nothing changed: the "
                           f"database that served before ({db.name}) serves, with its "
                           "media, and the services run.",
                           "See the message above.") from exc


def _restore_from(host, services, migrate, manifest, versions, record, advance, progress,
                  phase):
    config, db, folder = host.config, host.db, record["backup"]
    s3 = config.s3()
    if phase is not None:
        phase(PREPARING)
    new = db.other(record["new_database"])
    owner = db.user or db.run_as
    # Made like the database it replaces: same encoding and collation.
    encoding, collate, ctype = host.admin.query(
        "SELECT pg_encoding_to_char(encoding) || '|' || datcollate || '|' || datctype "
        f"FROM pg_database WHERE datname = '{db.name}'").split("|")
    host.admin.query(f'CREATE DATABASE "{new.name}"' + (f' OWNER "{owner}"' if owner else "")
                     + f" ENCODING '{encoding}' LC_COLLATE '{collate}' LC_CTYPE '{ctype}' "
                     "TEMPLATE template0")
    _log(progress, f"restoring {backup.DUMP} into the new database {new.name}...")
    part = manifest["database"]
    backup._restore(new, backup.Download(s3, config.bucket, part["key"], part["sha256"],
                                         versions["database"]))
    counts = new.row_counts()
    expected = manifest["row_counts"]
    differ = sorted(t for t in set(expected) | set(counts) if expected.get(t) != counts.get(t))
    if differ:
        raise RestoreError(f"The restored database's row counts differ from the manifest "
                           f"in {', '.join(differ)}.", "Choose another backup.")
    _log(progress, f"restoring {backup.MEDIA} into {record['new_media']}...")
    part = manifest["media"]
    _extract_media(host, backup.Download(s3, config.bucket, part["key"], part["sha256"],
                                         versions["media"]), record["new_media"])
    before = db.migrations()
    after = new.migrations()
    _log(progress, f"checks passed ({sum(counts.values())} rows in {len(counts)} tables); "
                   f"stopping {' '.join(services.units) or 'nothing'} to switch")
    record["services"] = "stopped"
    advance(SWITCHING)
    services.stop()
    _switch(host, record)
    if after != before:
        advance(MIGRATING)
        _log(progress, "the backup's migrations differ from the release's: migrate...")
        migrate()
    advance(DONE)
    _started(host, services, record)
    _log(progress, f"restore {folder}: done")
    try:
        _remove_older(host, record, progress)
    except HeliosAWSError as exc:
        _log(progress, f"could not remove what earlier restores kept: {exc.message}")
    return record


def _switch(host, record):
    """The media directories renamed (as the service user), then the databases (one
    transaction)."""
    _rename(host, record["media"], record["previous_media"])
    _rename(host, record["new_media"], record["media"])
    _rename_databases(host, (record["database"], record["previous_database"]),
                      (record["new_database"], record["database"]))


def _undo(host, record):
    """Back to the old database and media, from wherever the restore stopped: every
    step looks at what is there, so undoing twice is harmless."""
    if host.database_exists(record["previous_database"]):
        _rename_databases(host, (record["database"], record["new_database"]),
                          (record["previous_database"], record["database"]))
    if host.database_exists(record["new_database"]):
        host.admin.query(f'DROP DATABASE "{record["new_database"]}" WITH (FORCE)')
    if host.exists(record["previous_media"]):
        if host.exists(record["media"]):
            _rename(host, record["media"], record["new_media"])
        _rename(host, record["previous_media"], record["media"])
    if host.exists(record["new_media"]):
        host.run_as_user("rm", "-rf", "--", record["new_media"])


def recover(host, services, progress=None):
    """Finish what an interrupted restore left: undone unless its journal says done;
    the services started either way. Returns the journal's record (None without one)."""
    record = read_journal(host.journal)
    if record is None:
        return None
    if record["phase"] not in (DONE, UNDONE):
        _log(progress, f"undoing the restore of {record['backup']} (interrupted in phase "
                       f"{record['phase']})...")
        _undo(host, record)
        record["phase"] = UNDONE
        write_journal(host.journal, record)
    if record.get("services") == "stopped":
        _started(host, services, record)
    return record


def _started(host, services, record):
    """The services started, and the journal saying so (a later ``status`` then leaves
    alone services an operator stopped on purpose)."""
    services.start()
    record["services"] = "started"
    write_journal(host.journal, record)


def _remove_older(host, record, progress):
    """What earlier restores kept (their previous database and media), now that this
    one succeeded: only this restore's previous ones stay."""
    listed = host.admin.query(
        "SELECT coalesce(string_agg(datname, ' '), '') FROM pg_database WHERE datname LIKE "
        f"'{record['database']}\\_previous\\_%' "
        f"AND datname <> '{record['previous_database']}'")
    for name in listed.split():
        host.admin.query(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _log(progress, f"removed database {name}, kept by an earlier restore")
    media = Path(record["media"])
    older = host.run_as_user("find", str(media.parent), "-mindepth", "1", "-maxdepth", "1",
                             "-name", media.name + ".previous-*", "!", "-path",
                             record["previous_media"], "-print0").split("\0")
    for path in filter(None, older):
        host.run_as_user("rm", "-rf", "--", path)
        _log(progress, f"removed {path}, kept by an earlier restore")


# ------------------------------------------------------------------------- services


class Services:
    """The app's systemd units: stopped only for the switch."""

    def __init__(self, units):
        self.units = list(units)

    def _systemctl(self, action):
        if not self.units:
            return
        result = subprocess.run(["systemctl", action, "--", *self.units], env=clean_env(),
                                capture_output=True, text=True, cwd="/",
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise backup.BackupError(f"systemctl {action} {' '.join(self.units)} failed: "
                                     f"{result.stderr.strip()}",
                                     "Look at journalctl on the host.")

    def stop(self):
        self._systemctl("stop")

    def start(self):
        self._systemctl("start")


def migrator(host):
    """``manage.py migrate`` of the current release, as the service user, with nothing
    of root's environment (Helios reads its .env itself)."""

    def migrate():
        env = clean_env({"HELIOS_ENV_FILE": str(host.env_file),
                         "DJANGO_SETTINGS_MODULE": host.migrate_settings,
                         "HOME": str(host.release)})
        result = subprocess.run(
            host.as_user(str(host.release / ".venv" / "bin" / "python"), "manage.py",
                         "migrate", "--no-input"),
            env=env, cwd=host.release, capture_output=True, text=True,
            stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise backup.BackupError(f"migrate failed: {result.stderr.strip()[-2000:]}",
                                     "See the message above.")

    return migrate


# ------------------------------------------------------------------------- entry


def _writer():
    """Progress lines to stdout; once the operator's side is gone (SSH lost, Ctrl-C
    there), writing stops and the work goes on to its end."""
    gone = []

    def write(line):
        if gone:
            return
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except OSError:
            gone.append(True)

    return write


def arguments(argv):
    parser = argparse.ArgumentParser(prog="python -I -m helios_aws.rootside")
    parser.add_argument("action", choices=("drill", "restore", "worker", "status"))
    parser.add_argument("--config", default=backup.CONFIG_PATH)
    parser.add_argument("--env-file", required=True)
    parser.add_argument("--media", required=True)
    parser.add_argument("--release", required=True)
    parser.add_argument("--journal", default=JOURNAL)
    parser.add_argument("--backup", default="")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--object-version", default=None, type=object_version)
    return parser.parse_args(argv)


VERSION_RE = re.compile(r"[A-Za-z0-9._+=-]{1,1024}")


def object_version(text):
    """An S3 version id, as S3 spells them (letters, digits and . _ - + =)."""
    if not VERSION_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an S3 version id")
    return text


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = arguments(argv)
    write = _writer()
    try:
        host = load_host(args)
        services = Services(host.config.units)
        before = read_journal(host.journal)
        if args.action != "worker" and before is not None and \
                before["phase"] not in (DONE, UNDONE):
            # A restore was cut short and its supervisor too: finish it first.
            before = recover(host, services, write)
        if args.action == "drill":
            backup.drill(host.config, host.db, host.admin, args.backup or None,
                         progress=write, object_version=args.object_version or None)
            return 0
        if args.action == "worker":
            restore(host, services, migrator(host), args.backup, force=args.force,
                    progress=write, object_version=args.object_version or None)
            return 0
        if args.action == "restore":
            # The worker does the restore; this process stays to recover whatever the
            # worker leaves (killed, interrupted), then says which database serves.
            for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
                signal.signal(signum, signal.SIG_IGN)
            worker = subprocess.run([sys.executable, "-I", "-m", "helios_aws.rootside",
                                     "worker", *argv[1:]], env=clean_env(dict(os.environ)),
                                    cwd="/", stdin=subprocess.DEVNULL,
                                    preexec_fn=_default_signals)
            after = read_journal(host.journal)
            started = after is not None and after != before
            record = recover(host, services, write) if started else None
            write(outcome(record) if record is not None else
                  "The restore did not happen: nothing on the server changed.")
            return 0 if worker.returncode == 0 and record and record["phase"] == DONE \
                else 1
        record = recover(host, services, write)
        write(outcome(record))
        return 0
    except HeliosAWSError as exc:
        sys.stderr.write(f"{exc.message}\n{exc.hint}\n" if exc.hint else f"{exc.message}\n")
        return 1


def _default_signals():
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
