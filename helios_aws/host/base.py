"""What every host step shares: the names of the server's paths and units, the helpers
that build and read its commands (every value quoted, facts NUL-terminated), the run's
SSH connection, the :class:`Target` a step works for and the :class:`HostStep` contract."""

import hashlib
import re
import shlex
from pathlib import PurePosixPath

from .. import layout as layout_mod, project as project_mod
from ..aws import ssh_access
from ..engine import Step
from ..errors import ConfigError, HostError
from . import recipes
from .progress import ToolProgress
from .ssh import Connection, normalise_fingerprint

KEEP_RELEASES = 3
LIVENESS_PATH = "/helios/elections/params"
APP_UNITS = ("gunicorn.socket", "gunicorn.service", "helios-celery.service")
APP_SERVICES = ("gunicorn.service", "helios-celery.service")
RENEW_TIMER = "helios-certbot-renew.timer"
STATE_DIR = "/var/lib/helios-aws"
CACHE_DIR = "/var/cache/helios-aws"
# A release directory's name: a UTC time stamp and the release id (see deploy.Release.apply).
RELEASE_NAME_RE = re.compile(r"[0-9]{14}-[0-9a-f]{16}")
STAMP_GLOB = "[0-9]" * 14
RELEASE_GLOB = STAMP_GLOB + "-" + "[0-9a-f]" * 16
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
EXTRA_PACKAGES = ("gunicorn", "django-environ")
PEM_RE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
OS_RELEASE = {"debian13": ("debian", "13"), "al2023": ("amzn", "2023")}


# ------------------------------------------------------------------------- helpers


def fact(key, command):
    """A shell line printing the fact ``key``: the output of ``command``, NUL-terminated so
    no value (a file name with a line break, say) can pass for another fact."""
    return f"printf '%s=%s\\0' {q(key)} \"$({command})\"\n"


def parse_facts(text):
    """The NUL-terminated ``key=value`` records the read scripts print, as a dict."""
    facts = {}
    for record in text.split("\0"):
        key, sep, value = record.partition("=")
        if sep:
            facts[key.strip()] = value.strip()
    return facts


def release_name(answer):
    """A release directory name the server answered, checked before any command uses it."""
    if not RELEASE_NAME_RE.fullmatch(answer):
        raise HostError(f"The server answered {answer!r} for a release directory, which is "
                        "not a release's name (time stamp and id).",
                        "Look at the releases directory on the server; remove what this "
                        "tool did not make.")
    return answer


def sha256(data):
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


def q(value):
    return shlex.quote(str(value))


def file_hashes_script(paths):
    """Shell lines printing ``sha.<path>=<sha256>`` for each path (empty when missing)."""
    return "".join(fact(f"sha.{p}", f"sha256sum -- {q(p)} 2>/dev/null | cut -c1-64")
                   for p in paths)


def unit_state_script(units):
    return "".join(
        fact(f"enabled.{u}", f"systemctl is-enabled -- {q(u)} 2>/dev/null || true")
        + fact(f"active.{u}", f"systemctl is-active -- {q(u)} 2>/dev/null || true")
        for u in units)


def restart_running(units=APP_SERVICES):
    """Restart those of ``units`` that run (they may not even exist yet)."""
    return (f"for u in {shlex.join(units)}; do "
            "if systemctl is-active --quiet -- \"$u\"; then systemctl restart -- \"$u\"; fi; "
            "done")


def connection(ctx):
    """The run's SSH connection, opened (host key verified) on first use."""
    if ctx.ssh is None:
        ctx.ssh = open_connection(ctx)
    return ctx.ssh


def pinned_fingerprints(ctx):
    """``--trust-host-key`` (one or several, comma separated) and the fingerprints the AWS
    half read from the instance's console output."""
    given = ctx.options.get("trust_host_key") or []
    if isinstance(given, str):
        given = given.replace(",", " ").split()
    found = list(given) + list(ctx.facts.get("host_fingerprints") or [])
    return [normalise_fingerprint(f) for f in found]


def open_connection(ctx):
    options, facts = ctx.options, ctx.facts
    host = options.get("host") or facts.get("host")
    if not host:
        raise HostError("There is no server to connect to.",
                        "Give --host (with --skip-aws), or let the AWS half create the "
                        "instance first.")
    deployment = ctx.deployment
    open_ssh_access(ctx)
    conn = Connection(
        host, user=options.get("ssh_user") or deployment.ssh_user or None,
        default_user=deployment.os_profile["ssh_user"], port=options.get("ssh_port"),
        key_filename=options.get("ssh_key") or facts.get("ssh_key_file"),
        pinned=pinned_fingerprints(ctx), allow_agent=options.get("ssh_agent", True),
        redact=ctx.redactor.redact, log=ctx.log.info,
        lock=str(layout_mod.for_deployment(deployment, deployment.host_prefix).lock),
        on_lock_wait=ctx.notice,
    )
    wait = options.get("ssh_wait")
    if wait is None:
        # A new instance needs a few minutes before sshd answers; a running server not.
        wait = 600 if facts.get("instance_created") else 60
    return conn.connect(wait=wait, on_wait=ctx.detail)


def open_ssh_access(ctx):
    """Without --ssh-cidr, port 22 opened to the operator's address for this run (once;
    the command that made ``ctx`` closes it at its end: :func:`close_ssh_access`)."""
    if getattr(ctx, "ssh_access", None) is not None or ctx.aws is None:
        return
    group_id = ctx.facts.get("security_group_id") or ssh_access.recorded_group(
        {"security_group": ctx.state.get("security_group")})
    ctx.ssh_access = ssh_access.open_for(ctx.aws, ctx.deployment, group_id,
                                         ctx.options.get("ssh_from"), ctx.say)


def close_ssh_access(ctx):
    access = getattr(ctx, "ssh_access", None)
    if access is not None:
        ctx.ssh_access = None
        access.close()


class Target:
    """What every host step needs to know, derived once from the context."""

    def __init__(self, ctx, project=None):
        self.ctx = ctx
        self.deployment = ctx.deployment
        self.recipe = recipes.for_deployment(self.deployment)
        self.layout = layout_mod.for_deployment(self.deployment, self.deployment.host_prefix)
        self.broker = self.deployment.effective_broker
        self.options = ctx.options
        self._project = project

    @property
    def project(self):
        if self._project is None:
            self._project = project_mod.inspect()
        return self._project

    def local(self, rel):
        """Text of a file aws_configure rendered into the output directory."""
        path = self.ctx.out_dir / rel
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path} is missing.",
                              "Run manage.py aws_configure first (with the same --output).")

    @property
    def state_dir(self):
        """This tool's own records on the server (not the app's)."""
        return PurePosixPath(self.layout.prefix + STATE_DIR)

    @property
    def cache_dir(self):
        """The installs' download caches (the service user's, who runs them)."""
        return PurePosixPath(self.layout.prefix + CACHE_DIR)

    def release_state(self, name):
        """This tool's records of release ``name`` (installed, migrated, source, the
        wheel), kept outside the release so the project's files cannot redirect them."""
        return self.state_dir / "releases" / name

    @property
    def uses_uv(self):
        return not self.options.get("git_url") and self.project.dependency_source == "uv"

    @property
    def uv(self):
        return self.layout.root / "tools" / "uv" / "bin" / "uv"

    @property
    def server(self):
        return self.options.get("server") or ""


class HostStep(Step):
    """A step run on the server over the run's SSH connection."""

    def __init__(self, target):
        self.target = target

    def sh(self, ctx, command, sudo=True, check=True, **kwargs):
        return connection(ctx).run(command, sudo=sudo, check=check, step=self.name, **kwargs)

    def sh_with_progress(self, ctx, command, **kwargs):
        """:meth:`sh` for a long install: what apt, dnf, uv or pip says it is doing is
        passed on, as it runs, to the step's progress line."""
        return self.sh(ctx, command, on_line=ToolProgress(ctx.progress).feed, **kwargs)

    def facts(self, ctx, script):
        """Run a read script as root and parse its ``key=value`` output."""
        return parse_facts(self.sh(ctx, "cd /\n" + script + "\nexit 0").stdout)
