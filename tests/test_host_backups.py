"""The host half's backup step, fed facts and checked for the commands it sends (as the
other host steps are tested), and the units aws_configure renders for it."""

import json

from django.db import connection

from helios_aws import engine
from helios_aws.host import base as host_base, steps as host
from helios_aws.host.backups import BackupTimer
from test_host_steps import ctx, facts, project, run_step, sha, target  # noqa: F401

CONFIG = "/var/lib/helios-aws/backup.json"


def with_bucket(ctx):
    ctx.state.set("backups", {"bucket": "helios-helios-backup-0123abcd"})
    return ctx


def test_the_timer_is_enabled_with_the_bucket_in_backup_json(ctx, project):
    change, _ = run_step(BackupTimer(target(with_bucket(ctx), project)), ctx)

    assert change.action == engine.CREATE
    assert change.details == [f"write {CONFIG}", "enable and start helios-backup.timer"]
    text, mode, owner = ctx.ssh.files[CONFIG]
    assert (mode, owner) == (0o644, "root")
    assert json.loads(text) == {
        "bucket": "helios-helios-backup-0123abcd", "prefix": "helios", "region": "us-east-1",
        "service_user": "helios", "units": list(host_base.APP_UNITS),
        # The zone Django's own connection gives the database session (elections.py).
        "time_zone": connection.timezone_name}
    assert ctx.ssh.commands[-1] == ("systemctl daemon-reload && systemctl enable --now "
                                    "helios-backup.timer >/dev/null 2>&1")


def test_the_timer_in_place_is_a_no_op(ctx, project):
    step = BackupTimer(target(with_bucket(ctx), project))
    ctx.ssh.reply("cd /\n", facts(**{f"sha.{CONFIG}": sha(step.config(ctx)),
                                     "enabled.helios-backup.timer": "enabled",
                                     "active.helios-backup.timer": "active"}))

    _, outcome = run_step(step, ctx)

    assert outcome == engine.UNCHANGED and not ctx.ssh.files


def test_without_a_bucket_nothing_is_set_up_and_the_operator_is_told(ctx, project):
    change, outcome = run_step(BackupTimer(target(ctx, project)), ctx)

    assert outcome == engine.UNCHANGED and not ctx.ssh.files
    assert "nightly backup is not set up" in ctx.facts["notes"][0]


def test_the_units_run_nightly_as_the_service_user_without_credentials(ctx):
    service = (ctx.out_dir / "systemd/helios-backup.service").read_text()
    timer = (ctx.out_dir / "systemd/helios-backup.timer").read_text()

    # root takes the deployment lock with the unit's own environment (no .env), then
    # runs the backup as the service user, whose Helios reads its .env itself.
    assert "\nEnvironmentFile=" not in service and "\nUser=" not in service
    assert "Environment=HELIOS_ENV_FILE=/srv/helios/config/.env\n" in service
    assert ("Environment=DJANGO_SETTINGS_MODULE=helios_aws.settings_overrides.production\n"
            in service)
    assert "UMask=0077\n" in service
    assert "ExecStartPre=+/bin/sh -c 'umask 077 && : >> /run/helios-aws.lock'\n" in service
    assert ("ExecStart=/usr/bin/flock --wait 7200 /run/helios-aws.lock /usr/bin/setpriv "
            "--reuid=helios --regid=helios --init-groups --inh-caps=-all -- "
            "/srv/helios/current/.venv/bin/python manage.py aws_backup --here "
            f"--config {CONFIG}\n") in service
    assert "AWS_" not in service and "SECRET" not in service and "PASSWORD" not in service
    assert "OnCalendar=*-*-* 03:15:00 UTC\n" in timer
    assert "RandomizedDelaySec=45min\n" in timer and "Persistent=true\n" in timer
