"""The host's side of backups: where they go, and the nightly timer that takes them.

The AWS half creates the bucket; this step writes its name (and the deployment's prefix,
region, service user, app units and Helios's time zone, never a credential: the instance role provides
those) to ``/var/lib/helios-aws/backup.json``, which ``manage.py aws_backup --here`` and
``aws_restore --here`` read, and enables ``helios-backup.timer`` (the units themselves
are installed with the others by the Units step).
"""

from pathlib import PurePosixPath

from ..aws.base import note
from .. import elections
from ..backup import CONFIG_PATH, Config
from ..engine import CREATE, KEEP, UNCHANGED, UPDATE, Change
from .base import (
    APP_UNITS, HostStep, connection, file_hashes_script, sha256, unit_state_script,
)

TIMER = "helios-backup.timer"


class BackupTimer(HostStep):
    """backup.json in place and the nightly backup timer enabled and active."""

    name = "host: nightly backup"

    @property
    def path(self):
        return PurePosixPath(self.target.layout.prefix + CONFIG_PATH)

    def config(self, ctx):
        """The file's text, or None when no bucket is known (the AWS half never ran)."""
        bucket = ctx.facts.get("backup_bucket") or (ctx.state.get("backups") or {}).get(
            "bucket")
        if not bucket:
            return None
        d = self.target.deployment
        return Config(bucket=bucket, prefix=d.name, region=d.region,
                      service_user=self.target.layout.service_user,
                      units=APP_UNITS,
                      time_zone=elections.session_time_zone()).as_json()

    def read(self, ctx):
        return self.facts(ctx, file_hashes_script([self.path]) + unit_state_script([TIMER]))

    def plan(self, ctx, current):
        text = self.config(ctx)
        if text is None:
            note(ctx, "No backup bucket is recorded, so the nightly backup is not set up: "
                      "run aws_provision without --skip-aws once.")
            return Change(KEEP, "no backup bucket yet")
        details = []
        if current.get(f"sha.{self.path}") != sha256(text):
            details.append(f"write {self.path}")
        if current.get(f"enabled.{TIMER}") != "enabled" or \
                current.get(f"active.{TIMER}") != "active":
            details.append(f"enable and start {TIMER}")
        if not details:
            return Change(KEEP, f"{TIMER}: nightly")
        return Change(CREATE if not current.get(f"sha.{self.path}") else UPDATE, *details)

    def apply(self, ctx, current, change):
        text = self.config(ctx)
        if text is None:
            return UNCHANGED
        if current.get(f"sha.{self.path}") != sha256(text):
            connection(ctx).put_files({self.path: text}, step=self.name)
        self.sh(ctx, f"systemctl daemon-reload && systemctl enable --now {TIMER} "
                     ">/dev/null 2>&1")
