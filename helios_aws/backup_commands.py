"""What ``aws_backup`` and ``aws_restore`` do, on both sides of the SSH connection.

On the operator's machine they open the host half's verified SSH connection (the host key
pinned in ``state.json``, as ``aws_check`` does), whose root shell holds the host's
deployment lock (the one ``aws_provision`` takes), and run the host's side there. A
backup runs ``manage.py aws_backup --here`` from the ``current`` release as the service
user (as the timer runs it), with nothing of root's environment. A drill or a restore
runs as root, because it creates databases and stops the services: that side is
:mod:`helios_aws.rootside`, started with an empty environment, which never loads the
deployment's .env (see docs/root.md). ``--list`` reads the bucket from here, with the
operator's own AWS credentials.
"""

import argparse
import contextlib
import os
import shlex
from pathlib import Path

from . import backup, layout as layout_mod, params, rootside
from .aws.backups import find_bucket
from .aws import ssh_access
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
    group.add_argument("--ssh-from", default="", metavar="ADDRESS",
                       help="Without --ssh-cidr: this machine's public address, which port "
                            "22 is opened to while the command runs (default: the answer "
                            "of AWS's address echo).")


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
    if os.geteuid() == 0 and config.service_user not in ("", "root"):
        raise backup.BackupError(
            f"aws_backup --here runs as the service user {config.service_user}, not as "
            "root: root does not run Helios's settings or read its .env.",
            f"Run it as the timer does (runuser -u {config.service_user}), or from your "
            "machine with aws_backup.")
    # The zone Helios's session stores its times in (elections.py): Django's own answer.
    db = backup.Database.from_django(settings.DATABASES["default"],
                                     time_zone=connection.timezone_name)
    return config, db, settings.MEDIA_ROOT, Path.cwd().name


def here_backup(options, write):
    config, db, media, release = _here(options)
    backup.run_backup(config, db, media, kind=options.get("kind") or "daily",
                      release=release, progress=write)


# ------------------------------------------------------------------------- operator side


def config_path(deployment):
    return deployment.host_prefix.rstrip("/") + backup.CONFIG_PATH


def host_command(deployment, command, args, as_service):
    """The shell command running ``manage.py COMMAND ARGS --here`` in the current release
    as the service user, with an empty environment but for the .env's path (Helios reads
    the file itself)."""
    lay = layout_mod.for_deployment(deployment, deployment.host_prefix)
    argv = ["runuser", "-u", lay.service_user, "--", "env", "-i",
            f"PATH={rootside.SAFE_PATH}", "LANG=C.UTF-8", f"HOME={lay.root}",
            f"HELIOS_ENV_FILE={lay.env_file}",
            f"DJANGO_SETTINGS_MODULE={layout_mod.SETTINGS_MODULE}",
            str(lay.venv_bin / "python"), "manage.py", command, *args, "--here",
            "--config", config_path(deployment)]
    return f"cd {shlex.quote(str(lay.current))} && {shlex.join(argv)}"


def root_command(deployment, action, args):
    """The shell command running :mod:`helios_aws.rootside` ACTION as root: root's own
    helios-aws environment (never a release's), Python in isolated mode, from ``/``,
    with an empty environment."""
    lay = layout_mod.for_deployment(deployment, deployment.host_prefix)
    prefix = deployment.host_prefix.rstrip("/")
    argv = ["env", "-i", f"PATH={rootside.SAFE_PATH}", "LANG=C.UTF-8",
            str(lay.root_tool / "bin" / "python"), "-I", "-m", "helios_aws.rootside", action,
            "--config", config_path(deployment), "--env-file", str(lay.env_file),
            "--media", str(lay.shared / "media"), "--release", str(lay.current),
            "--journal", prefix + rootside.JOURNAL, *args]
    return f"cd / && {shlex.join(argv)}"


def run_on_host(connection, deployment, command, args, write, as_service=False):
    """Run the host's side (``aws_backup`` as the service user, or a
    :mod:`~helios_aws.rootside` action as root); its progress lines go to ``write``;
    HostError on failure."""
    script = (host_command(deployment, command, args, True) if as_service
              else root_command(deployment, command, args))
    result = connection.run(script, sudo=True, check=False, timeout=HOST_SECONDS)
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
                       else [], trust_host_key=trusted, timeout=30,
                       lock=str(layout_mod.for_deployment(deployment,
                                                          deployment.host_prefix).lock),
                       on_lock_wait=options.get("on_lock_wait"))
    if opener is None:
        raise ConfigError("There is no server to connect to.",
                          "Run aws_provision first, or give --host.")
    return opener()


@contextlib.contextmanager
def host_session(deployment, out_dir, options, write):
    """The verified connection, with port 22 open to this machine while it is used
    (without --ssh-cidr); both are closed after the block, whatever ends it."""
    state = State(Path(out_dir) / STATE_NAME).data
    with ssh_access.opened(lambda: AWS(deployment.region, options.get("profile") or None),
                           deployment, state, options.get("ssh_from"), write):
        connection = connect(deployment, out_dir, options)
        try:
            yield connection
        finally:
            connection.close()


def on_host(deployment, out_dir, options, command, args, write, as_service=False):
    with host_session(deployment, out_dir, options, write) as connection:
        run_on_host(connection, deployment, command, args, write, as_service)


def restore_on_host(deployment, out_dir, options, args, write):
    """A restore into production. The server's answer to ``status`` is read first; if
    this side is then cut off from the restore (Ctrl-C here, the connection lost), the
    server is asked again once the restore let go of the lock: a new answer is this
    restore's outcome, the same one means it never began."""
    before, sent = [], False
    try:
        with host_session(deployment, out_dir, options, write) as connection:
            run_on_host(connection, deployment, "status", [], before.append)
            sent = True
            run_on_host(connection, deployment, "restore", args, write)
        return
    except HostError as exc:
        if not sent or ("ended while running" not in exc.message
                        and "was lost" not in exc.message):
            raise
        cut = "The connection to the server was lost during the restore"
    except KeyboardInterrupt:
        if not sent:
            raise HostError("Interrupted before the restore began: nothing on the server "
                            "changed.", "Run the same command again.")
        cut = "Interrupted here"
    write(f"{cut}; the server finishes or undoes the restore on its own. Asking it which "
          "database serves (this waits for the restore to end; Ctrl-C again to stop "
          "asking)...")
    said = []
    try:
        on_host(deployment, out_dir, options, "status", [], said.append)
    except (KeyboardInterrupt, HeliosAWSError) as exc:
        raise HostError(f"{cut}, and the server could not be asked which database serves"
                        + (f": {exc.message}" if isinstance(exc, HeliosAWSError) else "."),
                        "Run manage.py aws_restore --status: it waits for the restore to "
                        "end, finishes or undoes it, and says which database serves.")
    for line in said:
        write(line)
    began = [line for line in said if line not in before]
    if not any(line.startswith("The restore of ") and " is complete" in line
               for line in began):
        raise HostError(f"{cut}: the restore did not happen (the server's answer is above).",
                        "Run the same command again.")


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
        lines.append(f"  {item['folder']}  {backup.describe_age(moment - item['uploaded_at'])} old  "
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
