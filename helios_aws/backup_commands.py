"""What ``aws_backup`` and ``aws_restore`` do, on both sides of the SSH connection.

On the operator's machine they open the host half's verified SSH connection (the host key
pinned in ``state.json``, as ``aws_check`` does) and run the same command on the host with
``--here``: from the ``current`` release's virtualenv, with the deployment's .env. A backup
runs as the service user (as the timer runs it); a drill or a restore runs as root,
because it creates a scratch database or stops the services, and runs the PostgreSQL
programs as the service user. ``--list`` reads the bucket from here, with the operator's
own AWS credentials.
"""

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from . import backup, layout as layout_mod, params
from .aws.backups import find_bucket
from .aws.compute import KEY_FILE
from .aws.session import AWS
from .engine import STATE_NAME, State
from .errors import ConfigError, HeliosAWSError, HostError

HOST_SECONDS = 6 * 3600
TAIL_LINES = 15
FINAL_BACKUP_SSH_WAIT = 15


# ------------------------------------------------------------------------- arguments


def add_ssh_arguments(parser):
    group = parser.add_argument_group("reaching the host (default: what aws_provision "
                                      "recorded)")
    group.add_argument("--host", default="", help="Address of the server.")
    group.add_argument("--ssh-port", type=params.tcp_port("--ssh-port"), default=None, help="SSH port (default 22).")
    group.add_argument("--ssh-key", default="", help="Private key for SSH.")
    group.add_argument("--known-hosts", default="", help="A known_hosts file to trust.")
    group.add_argument("--trust-host-key", default="", metavar="FINGERPRINT",
                       help="The server's host key fingerprint (SHA256:...).")


def add_host_side_arguments(parser):
    """The hidden options of the host's side (``--here``)."""
    parser.add_argument("--here", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", default=backup.CONFIG_PATH, help=argparse.SUPPRESS)


# ------------------------------------------------------------------------- host side


def _here(options):
    """The backup configuration, the database, MEDIA_ROOT and release of this host."""
    from django.conf import settings
    from django.db import connection

    config = backup.Config.load(options["config"])
    root = os.geteuid() == 0
    run_as = config.service_user if root and config.service_user not in ("", "root") else ""
    # The zone Helios's session stores its times in (elections.py): Django's own answer.
    db = backup.Database.from_django(settings.DATABASES["default"], run_as=run_as,
                                     time_zone=connection.timezone_name)
    return config, db, settings.MEDIA_ROOT, Path.cwd().name


def here_name(options):
    """The deployment's name, as this host's backup configuration records it."""
    return backup.Config.load(options["config"]).prefix


def here_backup(options, write):
    config, db, media, release = _here(options)
    backup.run_backup(config, db, media, kind=options.get("kind") or "daily",
                      release=release, progress=write)


def here_drill(options, write):
    config, db, _, _ = _here(options)
    admin = db.other("postgres", run_as="postgres" if os.geteuid() == 0 else "")
    backup.drill(config, db, admin, options.get("backup"), progress=write)


def here_restore(options, write):
    config, db, media, release = _here(options)

    def migrate():
        result = subprocess.run(db.argv(sys.executable, "manage.py", "migrate", "--no-input"),
                                cwd=Path.cwd(), capture_output=True, text=True)
        if result.returncode != 0:
            raise backup.BackupError(f"migrate failed: {result.stderr.strip()[-2000:]}",
                                     "See the message above.")

    backup.restore_production(config, db, media, options.get("backup"),
                              backup.Services(config.units), migrate,
                              force=options.get("force"), release=release, progress=write)


# ------------------------------------------------------------------------- operator side


def config_path(deployment):
    return deployment.host_prefix.rstrip("/") + backup.CONFIG_PATH


def host_command(deployment, command, args, as_service):
    """The shell command running ``manage.py COMMAND ARGS --here`` in the current release
    with the .env (as root, or as the service user)."""
    lay = layout_mod.for_deployment(deployment, deployment.host_prefix)
    argv = ["env", f"HELIOS_ENV_FILE={lay.env_file}",
            f"DJANGO_SETTINGS_MODULE={layout_mod.SETTINGS_MODULE}",
            str(lay.venv_bin / "python"), "manage.py", command, *args, "--here",
            "--config", config_path(deployment)]
    if as_service:
        argv = ["runuser", "-u", lay.service_user, "--"] + argv
    return f"cd {shlex.quote(str(lay.current))} && {shlex.join(argv)}"


def run_on_host(connection, deployment, command, args, write, as_service=False):
    """Run the host's side; its progress lines go to ``write``; HostError on failure."""
    result = connection.run(host_command(deployment, command, args, as_service), sudo=True,
                            check=False, timeout=HOST_SECONDS)
    for line in result.stdout.splitlines():
        write(line)
    if result.status != 0:
        said = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise HostError(f"{command} failed on the host (exit {result.status}):\n"
                        + "\n".join(said[-TAIL_LINES:]),
                        "Nothing was changed that the message above does not name.")


def connect(deployment, out_dir, options):
    """A verified SSH connection to the deployment's host (see aws_check's options)."""
    # The SSH side is imported when used: the operator's --list and the host's side
    # need none of it.
    from .probes.host import connector

    state = State(Path(out_dir) / STATE_NAME).data
    key = options.get("ssh_key") or (Path(out_dir) / KEY_FILE
                                     if (Path(out_dir) / KEY_FILE).is_file() else None)
    trusted = (options.get("trust_host_key") or "").replace(",", " ").split()
    opener = connector(deployment, state, host=options.get("host") or "",
                       port=options.get("ssh_port"), key_file=key,
                       known_hosts=[options["known_hosts"]] if options.get("known_hosts")
                       else [], trust_host_key=trusted, timeout=30)
    if opener is None:
        raise ConfigError("There is no server to connect to.",
                          "Run aws_provision first, or give --host.")
    return opener()


def on_host(deployment, out_dir, options, command, args, write, as_service=False):
    connection = connect(deployment, out_dir, options)
    try:
        run_on_host(connection, deployment, command, args, write, as_service)
    finally:
        connection.close()


def bucket_config(deployment, out_dir, profile=""):
    aws = AWS(deployment.region, profile or None)
    recorded = (State(Path(out_dir) / STATE_NAME).get("backups") or {}).get("bucket")
    bucket = find_bucket(aws, deployment, recorded)
    if bucket is None:
        raise ConfigError(f"Deployment {deployment.name} has no backup bucket in "
                          f"{deployment.region}.", "Run aws_provision first.")
    return backup.Config(bucket=bucket, prefix=deployment.name, region=deployment.region), aws


def _size(size):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


def listing(deployment, out_dir, profile=""):
    """Lines describing every backup: folder, age, size, whether a drill restored it."""
    config, aws = bucket_config(deployment, out_dir, profile)
    s3 = aws.client("s3")
    backups = backup.list_backups(config, s3)
    drills = backup.list_drills(config, s3)
    verified = {d["backup"]: d for d in reversed(drills) if d.get("passed")}
    if not backups:
        return [f"No backup in s3://{config.bucket}/{config.prefix}/ yet."]
    lines = [f"Backups in s3://{config.bucket}/ (newest first):"]
    moment = backup.now()
    for item in backups:
        drill = verified.get(item["folder"])
        status = (f"verified (drill {drill['finished_at']})" if drill
                  else "not verified by a drill")
        lines.append(f"  {item['folder']}  {backup.describe_age(moment - item['created_at'])} old  "
                     f"{_size(item['size'])}  {status}")
    failed = [d for d in drills[:1] if not d.get("passed")]
    for drill in failed:
        lines.append(f"The last drill ({drill.get('finished_at')}, {drill['backup']}) FAILED: "
                     f"{drill.get('error')}")
    return lines


def final_backup(ctx, out, instance):
    """``aws_provision --destroy``: back up once more before anything is deleted; a failure
    stops the destroy (unless ``--no-backup``)."""
    if instance is None:
        return
    if ctx.options.get("no_backup"):
        out.line("No final backup (--no-backup): what changed since the last backup is lost.",
                 "WARNING")
        return
    from .host.base import connection

    # The server has been up for a while: it answers at once, or not at all.
    if ctx.options.get("ssh_wait") is None:
        ctx.options["ssh_wait"] = FINAL_BACKUP_SSH_WAIT
    out.line("Final backup before anything is deleted...")
    try:
        run_on_host(connection(ctx), ctx.deployment, "aws_backup", ["--kind", "final"],
                    out.line, as_service=True)
    except HeliosAWSError as exc:
        raise backup.BackupError(
            f"The final backup failed, so nothing was destroyed: {exc.message}",
            "Fix what the message says (is the instance running? --start) and run --destroy "
            "again, or add --no-backup to destroy without it.") from exc
    out.line("final backup: completed", "SUCCESS")
