"""Day-two release work on the server: list the installed releases, roll back to the
previous one.

A release stays on the server after the next one is switched to (``KEEP_RELEASES`` of
them), code and virtualenv included, so going back is a switch of the ``current`` link
and a restart: no upload, no install. What can make an older release unsafe is the
database: migrations applied by the newer release that the older one does not have.
The older code may then meet columns or tables it does not expect, so the rollback is
refused, naming those migrations, until the operator reverses them.

A migration is known to a release when its file is there: ``APP/migrations/NAME.py``
anywhere in the release, its virtualenv included (Django's own apps), where APP, the
directory's name, is the app's label as Django records it (true of Helios's apps and of
Django's).

The applied migrations are read the way Helios reaches its database: from the release
being rolled back to, as the service user, with the deployed .env (so an external
database is read too). A read that fails refuses the rollback, naming what could not be
read; it never counts as "none applied". After the switch, the site must answer on its
liveness page through nginx, as after a deploy; if it does not, ``current`` goes back to
the release that was serving.
"""

import datetime

from .. import layout as layout_mod
from ..engine import KEEP, UPDATE, Change
from ..errors import HostError
from .base import RELEASE_GLOB, HostStep, Target, fact, q, release_name, restart_running
from .checks import Liveness
from .deploy import Switch
from .system import Connect

MIGRATIONS = ("find . -type f -path '*/migrations/*.py' ! -name '__init__.py' 2>/dev/null "
              "| sed -E 's,^.*/([^/]+)/migrations/([^/]+)[.]py$,\\1.\\2,' | sort -u")


class Releases(HostStep):
    """What is on the server: the releases, which one serves, the applied migrations."""

    name = "host: releases"

    def read(self, ctx):
        lay, target = self.target.layout, self.target
        records = target.state_dir / "releases"
        script = (f"cd -- {q(lay.releases)} 2>/dev/null || exit 0\n"
                  f"for d in {RELEASE_GLOB}; do\n"
                  "  { [ -d \"$d\" ] && [ ! -L \"$d\" ]; } || continue\n"
                  f"  r={q(records)}/\"$d\"\n"
                  "  printf '%s=%s\\0' \"installed.$d\" "
                  "\"$(stat -c %Y -- \"$r/installed\" 2>/dev/null)\"\n"
                  "  printf '%s=%s\\0' \"source.$d\" \"$(head -n 1 -- \"$r/source\" "
                  "2>/dev/null)\"\n"
                  f"  printf '%s=%s\\0' \"migrations.$d\" \"$(cd -- \"$d\" && {MIGRATIONS})\"\n"
                  "done\n"
                  + fact("current", f"readlink -- {q(lay.current)}"))
        facts = self.facts(ctx, script)
        releases = []
        for key, value in facts.items():
            if key.startswith("installed."):
                name = release_name(key.split(".", 1)[1])
                releases.append({
                    "name": name,
                    "installed": int(value) if value.isdigit() else None,
                    "source": facts.get(f"source.{name}", ""),
                    "migrations": set(facts.get(f"migrations.{name}", "").split()),
                })
        releases.sort(key=lambda r: r["name"], reverse=True)
        serving = Switch.serving(facts)
        return {"releases": releases, "serving": serving}

    def plan(self, ctx, current):
        return Change(KEEP, f"{len(current['releases'])} release(s), serving "
                            f"{current['serving'] or 'none'}")


# Run by the release's Python with Helios's settings: Django's own connection, so the
# database is the one Helios uses, wherever it is.
APPLIED_PY = ("import django\n"
              "django.setup()\n"
              "from django.db import connection\n"
              "with connection.cursor() as cursor:\n"
              "    cursor.execute('SELECT app, name FROM django_migrations')\n"
              "    print(' '.join(sorted(a + '.' + n for a, n in cursor.fetchall())))\n")
APPLIED_SECONDS = 180  # one cold start of the real Helios on a small, busy server


def describe(release, serving):
    when = (datetime.datetime.fromtimestamp(release["installed"], datetime.timezone.utc)
            .strftime("%Y-%m-%d %H:%M UTC") if release["installed"] else "not installed")
    mark = "serving" if release["name"] == serving else "       "
    return f"{release['name']}  {mark}  installed {when}  {release['source'] or '-'}"


class Rollback(Releases):
    """Switch ``current`` back to the newest installed release older than the serving one,
    and restart the app; refused while the database holds migrations it lacks."""

    name = "host: rollback"

    def read(self, ctx):
        current = super().read(ctx)
        try:
            previous = self.target_release(current)
        except HostError:
            return dict(current, applied=set())  # the plan refuses, saying why
        return dict(current, applied=self.applied(ctx, previous["name"]))

    def applied(self, ctx, name):
        """The migrations applied to Helios's database, read through release ``name``;
        HostError naming what could not be read."""
        lay = self.target.layout
        rel = lay.releases / name
        command = (f"cd {q(rel)} && runuser -u {q(lay.service_user)} -- env "
                   f"HELIOS_ENV_FILE={q(lay.env_file)} "
                   f"DJANGO_SETTINGS_MODULE={layout_mod.SETTINGS_MODULE} "
                   f"{q(rel)}/.venv/bin/python -c {q(APPLIED_PY)}")
        result = self.sh(ctx, command, check=False, timeout=APPLIED_SECONDS)
        said = [line.strip() for line in (result.stderr or result.stdout).splitlines()
                if line.strip()]
        if result.status != 0 or not result.stdout.strip():
            raise HostError(
                "Cannot read the migrations applied to Helios's database (table "
                f"django_migrations, through release {name} as {lay.service_user} with "
                f"{lay.env_file}): {' | '.join(said[-3:]) or f'exit {result.status}'}. "
                "Without them the rollback cannot tell whether that release's code fits "
                "the database, so it is refused.",
                "Make the database reachable (is PostgreSQL running? the .env's "
                "DATABASE_URL?) and the release whole, then try again; or fix forward "
                "with a new release.")
        return set(result.stdout.split())

    def target_release(self, current):
        serving = current["serving"]
        if serving is None:
            raise HostError("No release is serving on the server, so there is nothing to "
                            "roll back from.", "Run aws_provision to deploy one.")
        older = [r for r in current["releases"] if r["name"] < serving and r["installed"]]
        if not older:
            raise HostError(f"No installed release older than {serving} is left on the "
                            "server.", "Deploy the version you want with aws_provision "
                            "(an older commit, or --git-ref).")
        return older[0]

    def plan(self, ctx, current):
        previous = self.target_release(current)
        unknown = sorted(current["applied"] - previous["migrations"])
        if unknown:
            raise HostError(
                f"The database has migrations that release {previous['name']} does not "
                f"know: {', '.join(unknown)}. Its code could meet tables and columns it "
                "does not expect.",
                "Reverse them first from the serving release (as the service user: "
                "manage.py migrate APP PREVIOUS_MIGRATION), then roll back; or fix "
                "forward with a new release.")
        return Change(UPDATE, f"current -> releases/{previous['name']} (was "
                              f"releases/{current['serving']}), restart the app")

    def switch(self, ctx, name):
        lay = self.target.layout
        new_link = f"{lay.current}.helios-aws-new"
        self.sh(ctx, "\n".join([
            "set -e",
            f"ln -sfn -- {q('releases/' + name)} {q(new_link)}",
            f"mv -fT -- {q(new_link)} {q(lay.current)}",
            restart_running(),
        ]))

    def live(self, ctx):
        """(whether the site answers 200 within the deploy's wait, the last status)."""
        liveness = Liveness(self.target)
        result = self.sh(ctx, liveness.wait_script(), check=False,
                         timeout=liveness.wait_seconds + 120)
        lines = result.stdout.strip().splitlines()
        return result.status == 0, (lines[0] if lines else f"exit {result.status}")

    def apply(self, ctx, current, change):
        previous = self.target_release(current)
        serving = current["serving"]
        self.switch(ctx, previous["name"])
        # The same check as the end of a deploy: the site answers through nginx.
        answered, said = self.live(ctx)
        if not answered:
            self.switch(ctx, serving)
            back = (f"switched back to {serving}, which answers again" if self.live(ctx)[0]
                    else f"switched back to {serving}, which does not answer either")
            raise HostError(
                f"Release {previous['name']} did not answer on the liveness page after the "
                f"switch ({said}); {back}.",
                "See why with `journalctl -u gunicorn` on the server (a broken virtualenv?), "
                "or fix forward with a new release.")
        ctx.notice(f"Rolled back to {previous['name']}. The next aws_provision deploys the "
                   "checkout again: revert the change there first.")


def steps(ctx, action):
    """The host steps of ``--releases`` or ``--rollback``: log in, then the action."""
    target = Target(ctx)
    return [Connect(target), (Rollback if action == "rollback" else Releases)(target)]
