"""The host's side of the election seals: the directory nginx publishes them from, and
the timer that writes one within a minute of each election's freeze (the units are
installed with the others by the Units step; what the timer runs is
:mod:`helios_aws.sealside`)."""

from ..engine import CREATE, KEEP, Change
from ..sealside import PUBLISH_DIR
from .base import HostStep, fact, q, unit_state_script

TIMER = "helios-seal.timer"


class SealTimer(HostStep):
    """The seals' published directory in place and the seal timer enabled and active."""

    name = "host: election seals"

    @property
    def publish_dir(self):
        return self.target.layout.prefix + PUBLISH_DIR

    def read(self, ctx):
        return self.facts(ctx, fact("published", f"test -d {q(self.publish_dir)} && echo y")
                          + unit_state_script([TIMER]))

    def plan(self, ctx, current):
        details = [] if current.get("published") else [f"make {self.publish_dir}"]
        if current.get(f"enabled.{TIMER}") != "enabled" or \
                current.get(f"active.{TIMER}") != "active":
            details.append(f"enable and start {TIMER}")
        return Change(CREATE, *details) if details else Change(KEEP, f"{TIMER}: every minute")

    def apply(self, ctx, current, change):
        self.sh(ctx, f"install -d -m 0755 -o root -g root {q(self.publish_dir)} && "
                     f"systemctl daemon-reload && systemctl enable --now {TIMER} >/dev/null 2>&1")
