"""Host probes: the server itself, over the host half's verified SSH connection.

A :class:`~helios_aws.host.ssh.Connection` runs one command at a time (it keeps a
persistent remote shell), so concurrent probes borrow connections from a small
:class:`Pool`; each one verifies the host key like the first. Django commands run as the
host half runs them: from the ``current`` release, as the service user, with the .env;
the probes that need Django share one such process (:mod:`.django_side`).
Probes that need systemd are skipped on a host without it.
"""

import contextlib
import json
import shlex
import threading

from .. import layout as layout_mod
from ..host import recipes
from ..host.ssh import Connection
from ..host.base import APP_UNITS, RELEASE_NAME_RE, RENEW_TIMER, STATE_DIR, q
from . import django_side as django_side_mod, forwarding
from .base import TIMEOUT_HINTS, Skip, failed, passed, probe, warned

MAX_CONNECTIONS = 4
DISK_WARNING = 80
DISK_ERROR = 90
NGINX_UNIT = "nginx.service"
# One cold start of the real Helios (12-15 s seen on an emulated small server, so several
# times that on a loaded one) plus the Django-side checks' own deadline.
DJANGO_SECONDS = 90 + django_side_mod.CHECK_SECONDS
DJANGO_PROBE_SECONDS = DJANGO_SECONDS + 15  # and the SSH connection
DJANGO_START_HINT = ("Helios cannot start Django on the host: read the error above "
                     "(`journalctl -u gunicorn` shows the same).")
TIMEOUT_HINT = TIMEOUT_HINTS["host"]


class Pool:
    """Up to ``size`` SSH connections, each used by one probe at a time."""

    def __init__(self, connect, size=MAX_CONNECTIONS, on_close=None):
        self._connect = connect
        self._on_close = on_close
        self._slots = threading.Semaphore(size)
        self._lock = threading.Lock()
        self._idle = []
        self._all = []

    def open_first(self):
        """Open one connection now, so an unreachable or untrusted host is found once."""
        connection = self._connect()
        with self._lock:
            self._all.append(connection)
            self._idle.append(connection)
        return self

    @contextlib.contextmanager
    def connection(self):
        with self._slots:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                connection = self._connect()
                with self._lock:
                    self._all.append(connection)
            try:
                yield connection
            finally:
                with self._lock:
                    self._idle.append(connection)

    def run(self, command, sudo=True, timeout=60):
        """Run ``command``; a Result with ``status``, ``stdout``, ``stderr``."""
        with self.connection() as connection:
            return connection.run(command, sudo=sudo, check=False, timeout=timeout)

    def close(self):
        try:
            with self._lock:
                for connection in self._all:
                    connection.close()
                self._all.clear()
                self._idle.clear()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()  # port 22 closed again (aws/ssh_access.py)


def connector(deployment, state, host="", port=None, user="", key_file=None, known_hosts=(),
              trust_host_key=(), timeout=15, lock=None, on_lock_wait=None):
    """A function opening a verified Connection to the deployment's host, from the
    state file (the Elastic IP, the host key fingerprints the AWS half pinned) and the
    command's SSH options (``user`` instead of the deployment's login), giving up after ``timeout`` seconds; ``None`` when there is no
    host to connect to. With ``lock``, its root shell holds the host's deployment lock."""
    host = host or (state.get("elastic_ip") or {}).get("public_ip")
    if not host:
        return None
    pinned = list(trust_host_key) + sorted(
        ((state.get("host_key") or {}).get("fingerprints") or {}).values())

    def connect():
        return Connection(
            host, user=user or deployment.ssh_user or None,
            default_user=deployment.os_profile["ssh_user"], port=port,
            key_filename=str(key_file) if key_file else None, pinned=pinned,
            known_hosts=list(known_hosts), connect_timeout=timeout, lock=lock,
            on_lock_wait=on_lock_wait,
        ).connect()

    return connect


def _layout(ctx):
    return layout_mod.for_deployment(ctx.deployment, ctx.deployment.host_prefix)


def _systemd(ctx):
    """Skip unless systemd runs the host (sd_booted: /run/systemd/system exists)."""
    booted = ctx.once("host-systemd", lambda: ctx.ssh().run(
        "test -d /run/systemd/system", sudo=False, timeout=ctx.timeout).status == 0)
    if not booted:
        raise Skip("systemd does not run this host, so units cannot be checked.")


def as_service(ctx, program, *args):
    """``program ARGS`` in the current release, as the service user with the .env (as the
    host half runs migrations and the units run Helios)."""
    lay = _layout(ctx)
    return (f"cd {q(lay.current)} && runuser -u {q(lay.service_user)} -- env "
            f"HELIOS_ENV_FILE={q(lay.env_file)} "
            f"DJANGO_SETTINGS_MODULE={layout_mod.SETTINGS_MODULE} "
            f"{q(lay.venv_bin / program)} {shlex.join(args)}")


def manage(ctx, *args):
    return as_service(ctx, "python", "manage.py", *args)


def _tail(result, lines=3):
    text = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return " | ".join(line.strip() for line in text[-lines:]) or f"exit status {result.status}"


def expected_units(deployment):
    recipe = recipes.for_deployment(deployment)
    return [*APP_UNITS, NGINX_UNIT, f"{recipe.postgres_service}.service",
            recipe.broker_service(deployment.effective_broker)]


@probe("host.E001", "Every unit of the deployment is active",
       "See why with `sudo systemctl status UNIT` and `sudo journalctl -u UNIT -e` on the "
       "host; aws_provision starts them.")
def units_active(ctx):
    _systemd(ctx)
    units = expected_units(ctx.deployment)
    result = ctx.ssh().run("systemctl is-active " + " ".join(units), timeout=ctx.timeout)
    states = dict(zip(units, result.stdout.split()))
    down = [f"{u} {states.get(u, 'unknown')}" for u in units if states.get(u) != "active"]
    if down:
        return failed(f"Not active: {', '.join(down)}.")
    return passed(f"Active: {', '.join(units)}.")


@probe("host.E002", "`nginx -t` accepts the configuration",
       "Run `sudo nginx -t` on the host and fix what it names; a reload with a broken "
       "configuration keeps the old one running only until the next restart.")
def nginx_config(ctx):
    conf = _layout(ctx).nginx_site.parent.parent / "nginx.conf"
    result = ctx.ssh().run(f"nginx -t -q -c {q(conf)}", timeout=ctx.timeout)
    if result.status == 0:
        return passed(f"nginx -t accepts {conf}.")
    return failed(f"nginx -t rejects {conf}: {_tail(result)}")


def _disk_lines(text):
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 6 and fields[4].endswith("%"):
            yield fields[5], int(fields[4][:-1]), int(fields[3]) // (1024 * 1024)


@probe("host.E003", f"Disks are under {DISK_WARNING}% full (error at {DISK_ERROR}%)",
       "Free space on the host (old releases, `journalctl --vacuum-size=200M`, package "
       "caches) or grow the volume (aws_provision --volume-size).")
def disk_usage(ctx):
    root = _layout(ctx).root
    result = ctx.ssh().run(f"df -P -k / $(test -d {q(root)} && echo {q(root)})",
                            sudo=False, timeout=ctx.timeout)
    disks = sorted(set(_disk_lines(result.stdout)))
    if result.status != 0 or not disks:
        return failed(f"df failed: {_tail(result)}")
    worst = max(disks, key=lambda d: d[1])
    summary = ", ".join(f"{mount} {used}% used ({free} GiB free)" for mount, used, free in disks)
    if worst[1] >= DISK_ERROR:
        return failed(summary)
    if worst[1] >= DISK_WARNING:
        return warned(summary)
    return passed(summary)


@probe("host.E004", "The certificate renewal timer is enabled and active",
       f"Run `sudo systemctl enable --now {RENEW_TIMER}` on the host (aws_provision "
       "installs it).")
def renewal_timer(ctx):
    _systemd(ctx)
    result = ctx.ssh().run(f"systemctl is-enabled {RENEW_TIMER}; systemctl is-active "
                            f"{RENEW_TIMER}", timeout=ctx.timeout)
    enabled, active = (result.stdout.split() + ["unknown", "unknown"])[:2]
    if (enabled, active) == ("enabled", "active"):
        return passed(f"{RENEW_TIMER} is enabled and active.")
    return failed(f"{RENEW_TIMER} is {enabled} and {active}.")


def django_side(ctx):
    """The Django-side checks' answers ({"migrations": ..., "database": ..., "celery":
    ...}), from one ``manage.py aws_host_checks`` on the host shared by the probes."""
    return ctx.once("host-django", lambda: _django_side(ctx))


def _django_side(ctx):
    args = ["aws_host_checks"] + (["--celery-app", ctx.celery_app] if ctx.celery_app else [])
    result = ctx.ssh().run(manage(ctx, *args), timeout=max(ctx.timeout, DJANGO_SECONDS))
    lines = result.stdout.strip().splitlines()
    try:
        answers = json.loads(lines[-1]) if result.status == 0 and lines else None
    except ValueError:
        answers = None
    if not isinstance(answers, dict):
        return {"started": False, "error": _tail(result)}
    return dict(answers, started=True)


def _answer(ctx, key):
    """The check ``key``'s answer; a failed finding's message when Django did not start
    or the check failed in it."""
    answers = django_side(ctx)
    if not answers["started"]:
        return None, failed(f"Django did not start on the host: {answers['error']}",
                            DJANGO_START_HINT)
    answer = answers.get(key) or {"status": "fail", "error": "no answer"}
    if answer["status"] != "pass":
        return answer, failed(answer.get("error", ""),
                              TIMEOUT_HINT if answer.get("timeout") else "")
    return answer, None


@probe("host.E005", "Every migration is applied", "Run aws_provision, which migrates from "
       "the new release before switching to it, or `manage.py migrate` on the host.",
       timeout=DJANGO_PROBE_SECONDS, needs=DJANGO_PROBE_SECONDS)
def migrations_applied(ctx):
    answer, problem = _answer(ctx, "migrations")
    if problem:
        return failed(f"Cannot read the migrations: {problem.message}", problem.hint)
    pending = answer["pending"]
    if pending:
        shown = ", ".join(pending[:5]) + (" ..." if len(pending) > 5 else "")
        return failed(f"{len(pending)} migration(s) not applied: {shown}.")
    return passed(f"All {answer['applied']} migrations are applied.")


@probe("host.E006", "The Celery worker answers a ping",
       "See `sudo journalctl -u helios-celery -e` on the host (ignore the burst of "
       "RecursionError lines celery 5.6.1 logs at start-up) and that the broker runs.",
       timeout=DJANGO_PROBE_SECONDS, needs=DJANGO_PROBE_SECONDS)
def celery_ping(ctx):
    if not ctx.celery_app:
        raise Skip("The project's Celery app is not known (the project could not be read).")
    answer, problem = _answer(ctx, "celery")
    if problem:
        return failed(f"No worker answered: {problem.message}", problem.hint)
    if not answer["nodes"]:
        return failed(f"No worker answered a ping within "
                      f"{django_side_mod.CELERY_PING_SECONDS:g} s.")
    return passed(f"pong from {', '.join(answer['nodes'])}.")


@probe("host.E007", "PostgreSQL accepts the service user as Helios connects",
       "Check that PostgreSQL runs and that the service user's role may log in (peer "
       "authentication over the unix socket); aws_provision sets both up.",
       timeout=DJANGO_PROBE_SECONDS, needs=DJANGO_PROBE_SECONDS)
def database_login(ctx):
    service_user = _layout(ctx).service_user
    answer, problem = _answer(ctx, "database")
    if problem:
        return failed(f"{service_user} cannot log in: {problem.message}", problem.hint)
    return passed(f"{service_user} logs in to database {answer['database']} as role "
                  f"{answer['role']}.")


@probe("host.E008", "The site sends Helios the peer's address alone (X-Forwarded-For)",
       "Install the site aws_provision renders (X-Forwarded-For $remote_addr): Helios "
       "records the first X-Forwarded-For entry with every vote, so nginx must never pass "
       "on or append to what the client sent.")
def forwarded_address(ctx):
    site = _layout(ctx).nginx_site
    result = ctx.ssh().run(f"cat {q(site)}", timeout=ctx.timeout)
    if result.status != 0:
        return failed(f"Cannot read the site {site}: {_tail(result)}")
    try:
        found = forwarding.problems(result.stdout)
    except ValueError as exc:
        return failed(f"Cannot parse the site {site}: {exc}.")
    if found:
        return failed(f"A client can choose the address Helios records, in {site}: "
                      + " ".join(found))
    return passed(f"{site} sends the peer's address alone.")


@probe("host.E009", "An installed release is serving",
       "Run aws_provision to deploy one; `aws_provision --releases` lists what the server "
       "has.")
def serving_release(ctx):
    lay = _layout(ctx)
    result = ctx.ssh().run(f"readlink -- {q(lay.current)}", timeout=ctx.timeout)
    link = result.stdout.strip()
    directory, _, name = link.partition("/")
    if result.status != 0 or directory != "releases" or not RELEASE_NAME_RE.fullmatch(name):
        return failed(f"{lay.current} does not point at a release "
                      f"({link or _tail(result)}).")
    records = f"{lay.prefix}{STATE_DIR}/releases/{name}"
    result = ctx.ssh().run(f"stat -c %y -- {q(records + '/installed')} && "
                           f"head -n 1 -- {q(records + '/source')}", timeout=ctx.timeout)
    if result.status != 0:
        return failed(f"Release {name} is serving, but it was never completely installed.")
    installed, _, source = result.stdout.partition("\n")
    return passed(f"Serving release {name}, installed {installed[:16]}: {source.strip()}.")


@probe("host.E010", "The deployed .env is a file only the service user can read, and it can",
       "Run aws_provision, which writes it (0600, owned by the service user); Helios does "
       "not start without it.")
def env_file_readable(ctx):
    lay = _layout(ctx)
    env = q(lay.env_file)
    result = ctx.ssh().run(
        f"if [ ! -e {env} ]; then echo missing; elif [ ! -f {env} ]; then echo not-a-file; "
        f"elif ! runuser -u {q(lay.service_user)} -- test -r {env}; then echo unreadable; "
        f"else stat -c 'ok %a %U' -- {env}; fi", timeout=ctx.timeout)
    answer = result.stdout.split()
    if result.status != 0 or not answer:
        return failed(f"Cannot tell whether {lay.env_file} can be read: {_tail(result)}")
    if answer[0] == "missing":
        return failed(f"{lay.env_file} does not exist: Helios refuses to start without it.")
    if answer[0] == "not-a-file":
        return failed(f"{lay.env_file} is not a regular file.")
    if answer[0] == "unreadable":
        return failed(f"{lay.service_user} cannot read {lay.env_file}: Helios refuses to "
                      "start.")
    mode, owner = answer[1], answer[2]
    if int(mode, 8) & 0o077:
        return failed(f"{lay.env_file} has mode {mode}: others can read its secrets.")
    return passed(f"{lay.env_file} ({mode}, {owner}) is readable by {lay.service_user}.")
