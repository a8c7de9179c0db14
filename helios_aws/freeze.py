"""The election freeze: while an election is open, nothing changes the server.

Every operation that changes the server passes :class:`Gate` before its first change: the
host half of ``aws_provision`` (a release, the .env, the units, the nginx site, OS
packages: the :class:`~helios_aws.engine.Runner` calls the gate before it applies any
host step, so a step added later is covered without knowing of it), ``--rollback``,
``--stop``, ``--destroy`` and ``aws_restore --into-production``. The gate asks the server
which elections are open (:mod:`helios_aws.freezeside`, run as root: Helios's own
definition, :mod:`helios_aws.elections`) and refuses, naming each election and when it
closes. An answer it cannot get refuses too, naming what could not be read.

``--force --reason "..."`` overrides. Each change made under the override is first
written to an audit record (the reason, the operator: local user and AWS identity, the
time, the elections, what changes), appended to root's log on the host and put in the
backup bucket; if the record cannot be written, the change is not made.

A server that has never served Helios (no ``current`` release) holds no election: the
first provisioning passes without asking.
"""

import datetime
import getpass
import json
import secrets
import shlex

from . import envfile, layout as layout_mod, rootside
from .errors import ConfigError, HeliosAWSError

OPEN_ACTION, AUDIT_ACTION, PENDING_ACTION = "open", "audit", "pending"
NO_HELIOS = "no-helios-yet"
URL_KEYS = ("URL_HOST", "SECURE_URL_HOST")


class Frozen(HeliosAWSError):
    """An election is open (or whether one is could not be read): the change is refused."""


def check_options(options):
    """``--force`` needs ``--reason`` (the audit record's), and ``--reason`` means
    something only with ``--force``."""
    reason = (options.get("reason") or "").strip()
    if options.get("force") and not reason:
        raise ConfigError("--force needs --reason: overriding the election freeze is "
                          "recorded with the reason, on the server and in the backup bucket.",
                          'Add --reason "why this cannot wait until voting ends".')
    if reason and not options.get("force"):
        raise ConfigError("--reason means something only with --force.",
                          "Add --force, or drop --reason.")


def command(deployment, action):
    lay = layout_mod.for_deployment(deployment, deployment.host_prefix)
    prefix = deployment.host_prefix.rstrip("/")
    argv = ["env", "-i", f"PATH={rootside.SAFE_PATH}", "LANG=C.UTF-8",
            str(lay.root_tool / "bin" / "python"), "-I", "-m", "helios_aws.freezeside",
            action, "--config", prefix + "/var/lib/helios-aws/backup.json",
            "--env-file", str(lay.env_file), "--log", prefix + "/var/lib/helios-aws/audit.jsonl",
            *host_facts(deployment)]
    current = shlex.quote(str(lay.current))
    never = (f"if [ ! -e {current} ] && [ ! -L {current} ]; then echo {NO_HELIOS}; exit 0; fi\n"
             if action != AUDIT_ACTION else "")
    return f"{never}cd / && {shlex.join(argv)}"


def said(result):
    lines = [line for line in (result.stderr or "").strip().splitlines() if line.strip()]
    return " ".join(lines[-4:]) or f"exit {result.status}"


def read(connection, deployment):
    """The server's answer: {"open": [(short name, closes_at)], "elections": how many the
    database holds, "url_hosts": {URL_HOST, SECURE_URL_HOST of the deployed .env}};
    Frozen when it cannot be had."""
    result = connection.run(command(deployment, OPEN_ACTION), sudo=True, check=False,
                            timeout=120)
    out = (result.stdout or "").strip()
    if result.status == 0 and out == NO_HELIOS:
        return {"open": [], "elections": 0, "url_hosts": {}}
    if result.status != 0:
        raise Frozen(f"Cannot tell whether an election is open on the server, so nothing was "
                     f"changed: {said(result)}",
                     "Fix what the message says, or, if the change cannot wait, give "
                     '--force --reason "..." (it is recorded).')
    try:
        answer = json.loads(out.splitlines()[-1])
        return {"open": [(row["short_name"], row["closes_at"]) for row in answer["open"]],
                "elections": int(answer["elections"]),
                "url_hosts": {k: str(v) for k, v in answer["url_hosts"].items()}}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise Frozen(f"Cannot tell whether an election is open on the server: its answer "
                     f"was not understood ({exc}); nothing was changed.",
                     "Run aws_provision again to update root's helios-aws on the server.")


def describe(open_now):
    """``e1 (closes 2026-12-08 18:00 UTC), e2 (no closing time set)``."""
    def one(name, closes):
        if not closes:
            return f"{name} (no closing time set: open until an administrator closes it)"
        when = datetime.datetime.fromisoformat(closes)
        return f"{name} (closes {when:%Y-%m-%d %H:%M} UTC)"

    return ", ".join(one(name, closes) for name, closes in open_now)


def operator(ctx=None):
    """Who overrides: the local user and, if the run has AWS credentials at hand, their
    identity's ARN."""
    user = getpass.getuser()
    arn = None
    if ctx is not None and getattr(ctx, "aws", None) is not None:
        from .aws import account

        try:
            arn = account.caller(ctx)["arn"]
        except HeliosAWSError:
            arn = None
    return {"user": user, "aws": arn}


def audit_record(action, reason, who, open_now, changes, at=None):
    """The audit record of an override (schema: records.AUDIT, checked by root's side
    before it writes anything)."""
    at = at or datetime.datetime.now(datetime.timezone.utc)
    return {"at": at.isoformat(timespec="seconds"), "action": action,
            "reason": reason.strip(), "operator": who,
            "elections": [{"short_name": n, "closes_at": c} for n, c in open_now],
            "changes": list(changes)}


class Gate:
    """Asked before each change to the server (``gate(what)``, ``what`` a list of
    sentences): the first call reads the open elections; while one is open every call
    refuses, or, with ``--force --reason``, writes the audit record of ``what`` first."""

    def __init__(self, deployment, options, action, connect, ctx=None, say=None):
        self.deployment = deployment
        self.options = options
        self.action = action
        self.connect = connect
        self.ctx = ctx
        self.say = say or (lambda text: None)
        self.open = None
        self.unreadable = None
        self.answer = None

    def _read(self, connection):
        if self.open is not None:
            return
        try:
            self.answer = read(connection, self.deployment)
            self.open = self.answer["open"]
        except Frozen as exc:
            if not self.options.get("force"):
                raise
            self.open, self.unreadable = [], exc.message

    def __call__(self, what, url_hosts=None):
        """``url_hosts``: the URL_HOST/SECURE_URL_HOST this run deploys, when it deploys a
        .env (a change of them is refused while the database holds elections, --force
        or not)."""
        try:
            connection = self.connect()
        except HeliosAWSError as exc:
            if not self.options.get("force"):
                raise Frozen(f"Cannot tell whether an election is open: the server cannot be "
                             f"reached ({exc.message}); nothing was changed.",
                             "Start it or fix SSH (aws_check), or, if the change cannot "
                             'wait, give --force --reason "..." (it is recorded).') from exc
            connection = None
            self.open, self.unreadable = [], f"the server cannot be reached: {exc.message}"
        if connection is not None:
            self._read(connection)
        unchecked = []
        if url_hosts is not None and self.answer is not None:
            refuse_url_change(self.answer, url_hosts)
        elif url_hosts is not None:
            # Only under --force (unforced, the unreadable answer refused above).
            unchecked = ["the site's address (URL_HOST) could not be checked against the "
                         f"server's: deploying {url_hosts.get('SECURE_URL_HOST', '')}"]
        if not self.open and not self.unreadable:
            return
        if not self.options.get("force"):
            raise Frozen(
                f"Refusing {self.action}: election(s) open for voting now: "
                f"{describe(self.open)}. Nothing on the server may change while voters vote.",
                'Wait until voting ends, or give --force --reason "..." (the override is '
                "recorded on the server and in the backup bucket).")
        changes = list(what) + ([f"elections unreadable: {self.unreadable}"]
                                if self.unreadable else []) + unchecked
        record = audit_record(self.action, self.options["reason"], operator(self.ctx),
                              self.open, changes)
        if connection is None:
            where = self._record_in_bucket(record, "the server cannot be reached")
        else:
            result = connection.run(command(self.deployment, AUDIT_ACTION), sudo=True,
                                    check=False, input=json.dumps(record), timeout=120)
            if result.status == 0:
                where = (result.stdout or "").strip()
            elif self.unreadable:
                # root's side could not answer at all (e.g. a server whose root's
                # helios-aws predates the freeze): the operator records it instead.
                where = self._record_in_bucket(record, "root's side on the server could "
                                               "not record it")
            else:
                raise Frozen(f"The override of the election freeze could not be recorded, "
                             f"so nothing was changed: {said(result)}",
                             "Fix what the message says and run the same command again.")
        self.say(f"--force: {self.action} although "
                 f"{describe(self.open) if self.open else 'the elections could not be read'}"
                 f"; {where}")

    def _record_in_bucket(self, record, why):
        """The record, when the server cannot be reached, put in the backup bucket with
        the operator's own credentials (and in the run's log)."""
        from .aws.backups import find_bucket
        from .aws.session import call

        if self.ctx is None or getattr(self.ctx, "aws", None) is None:
            raise Frozen(f"The override cannot be recorded: {why}, and there are no AWS "
                         "credentials; nothing was changed.",
                         "Fix SSH to the server and run the same command again.")
        self.ctx.log.info("freeze override: %s", json.dumps(record, sort_keys=True))
        bucket = find_bucket(self.ctx.aws, self.deployment,
                             (self.ctx.state.get("backups") or {}).get("bucket"))
        if bucket is None:
            raise Frozen(f"The override cannot be recorded: {why}, and the deployment has no "
                         "backup bucket; nothing was changed.",
                         "Fix SSH to the server and run the same command again.")
        stamp = record["at"].replace("-", "").replace(":", "")[:15]
        key = f"{self.deployment.name}/audit/{stamp}-{secrets.token_hex(4)}.json"
        try:
            call(f"put the audit record s3://{bucket}/{key}",
                 self.ctx.aws.client("s3").put_object, Bucket=bucket, Key=key,
                 Body=(json.dumps(record, sort_keys=True) + "\n").encode(),
                 ContentType="application/json", ServerSideEncryption="AES256",
                 ChecksumAlgorithm="SHA256")
        except HeliosAWSError as exc:
            raise Frozen(f"The override could not be recorded, so nothing was changed: "
                         f"{exc.message}", exc.hint) from exc
        return f"audit record written to s3://{bucket}/{key} ({why})"


def refuse_url_change(answer, wanted):
    """URL_HOST and SECURE_URL_HOST never change once the database holds elections:
    each election's cast URL is part of its JSON, hence of its fingerprint."""
    deployed = answer["url_hosts"]
    changed = [f"{key} {deployed[key]} -> {wanted.get(key, '')}" for key in sorted(deployed)
               if deployed[key] and deployed[key] != wanted.get(key, "")]
    if changed and answer["elections"]:
        raise Frozen(
            f"Refusing to change the site's address ({'; '.join(changed)}): the database "
            f"holds {answer['elections']} election(s), and each election's cast URL is part "
            "of its fingerprint, which voters and auditors check; it would no longer match.",
            "Give aws_configure the old --domain again (then aws_configure and aws_provision "
            "run as before). A new address needs a new deployment for new elections.")


def step_gate(ctx, action):
    """The gate of a run of steps: the Runner calls it before it applies a host step."""
    from .configure import ENV_NAME
    from .host.base import HostStep, connection

    gate = Gate(ctx.deployment, ctx.options, action, lambda: connection(ctx), ctx=ctx,
                say=ctx.notice)
    # A provisioning run deploys the local .env; a rollback deploys none.
    deploys_env = action != "--rollback"

    def before_change(step, change):
        if not isinstance(step, HostStep):
            return
        what = f"{step.name}: {change.action}"
        if change.details:
            what += " (" + "; ".join(change.details) + ")"
        local = envfile.read(ctx.out_dir / ENV_NAME) if deploys_env else {}
        gate([ctx.redactor.redact(what)],
             url_hosts={k: local.get(k, "") for k in URL_KEYS} if deploys_env else None)

    return before_change


def guard_restore(deployment, out_dir, options, say):
    """``aws_restore --into-production``: the gate, on a connection of its own, closed
    before the restore opens the one that holds the server's lock for it."""
    from .backup_commands import host_session

    # (host_session opens port 22 to this machine for the while, without --ssh-cidr.)
    with host_session(deployment, out_dir, options, say) as connection:
        Gate(deployment, options, "a restore into production", lambda: connection,
             say=say)([f"restore {options.get('backup')} into production"])


def seal_command(deployment, action):
    """The shell command running :mod:`helios_aws.sealside` ACTION as root (as the seal
    timer runs it), with the deployment's paths."""
    lay = layout_mod.for_deployment(deployment, deployment.host_prefix)
    argv = ["env", "-i", f"PATH={rootside.SAFE_PATH}", "LANG=C.UTF-8",
            str(lay.root_tool / "bin" / "python"), "-I", "-m", "helios_aws.sealside", action,
            *seal_arguments(deployment)]
    current = shlex.quote(str(lay.current))
    return (f"if [ ! -e {current} ] && [ ! -L {current} ]; then echo {NO_HELIOS}; exit 0; fi\n"
            f"cd / && {shlex.join(argv)}")


def seal_arguments(deployment):
    """sealside's arguments for the deployment's layout (the timer's unit has the same)."""
    from .sealside import PUBLISH_DIR, SEAL_DIR

    lay = layout_mod.for_deployment(deployment, deployment.host_prefix)
    prefix = deployment.host_prefix.rstrip("/")
    return ["--config", prefix + "/var/lib/helios-aws/backup.json",
            "--env-file", str(lay.env_file), "--current", str(lay.current),
            "--unit-dir", str(lay.unit_dir), "--nginx-site", str(lay.nginx_site),
            "--seal-dir", prefix + SEAL_DIR, "--publish-dir", prefix + PUBLISH_DIR,
            *host_facts(deployment)]


def host_facts(deployment):
    """What root's side needs where the host has no backup.json (no bucket): Helios's
    time zone, from the project's settings, and the service user."""
    from .elections import session_time_zone

    lay = layout_mod.for_deployment(deployment, deployment.host_prefix)
    return ["--time-zone", session_time_zone(), "--service-user", lay.service_user]
