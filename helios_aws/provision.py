"""``aws_provision``: plan, apply, tear down, stop and start one deployment.

A run is the AWS steps (:mod:`helios_aws.aws.steps`) followed by the host steps
(:mod:`helios_aws.host.steps`) unless ``--skip-host`` is given.
Before anything is changed every AWS step is read and planned: bad input (an instance
type that does not exist, a domain without a hosted zone, a key file that would be
overwritten, no credentials) stops the run while nothing exists yet.
"""

import json
from pathlib import Path
from types import SimpleNamespace

from . import backup_commands, envfile, freeze, params
from .aws import account, backups, inventory, operator, pricing, sending, ssh_access, watch
from .aws.base import AWSStep
from .aws.backups import BackupBucketStep
from .aws.compute import KEY_FILE, InstanceStep, publish_host_key
from .aws.dns import DNSStep
from .aws.console import TRUSTED_FINGERPRINT_RE
from .aws.session import AWS
from .aws.steps import steps as aws_steps
from .configure import ENV_NAME, written_dirs
from .engine import (CREATE, KEEP, LOG_NAME, STATE_NAME, Activity, Context, Output, Runner, phase,
                     summary)
from .errors import ConfigError, HostError
from .files import exclusive, refuse_symlinks
from .host import base as host_base, rollback, steps as host_steps

LOGGED_PARAMS_LENGTH = 400


def run(deployment, out_dir, options, out, confirm):
    """Do what the options ask: ``--plan``, ``--destroy``, ``--stop``, ``--start``, or
    provision. ``confirm(prompt, expected)`` asks the operator before a teardown."""
    check_options(deployment, options)
    freeze.check_options(options)
    refuse_symlinks(Path(out_dir) / name for name in (ENV_NAME, STATE_NAME, LOG_NAME))
    with exclusive(out_dir, written_dirs(out_dir)), ssh_access.ending_on_signals(deployment):
        ctx = make_context(deployment, out_dir, options, out)
        try:
            if options.get("destroy"):
                return destroy(ctx, out, confirm)
            if options.get("releases"):
                return list_releases(ctx, out)
            if options.get("rollback"):
                ctx.before_change = freeze.step_gate(ctx, "--rollback")
                return roll_back(ctx, out)
            if options.get("stop") or options.get("start"):
                action = "stop" if options.get("stop") else "start"
                with phase(f"--{action}", f"Run aws_provision --{action} again."):
                    return stop_or_start(ctx, out, action)
            if options.get("test_alert"):
                return send_test_alert(ctx, out)
            if options.get("plan"):
                with phase("the plan (--plan)", "Nothing was changed."):
                    return show_plan(ctx, out)
            ctx.before_change = freeze.step_gate(ctx, "a change of the server")
            return provision(ctx, out)
        finally:
            # The host half opens the run's SSH connection on first use, and port 22
            # (without --ssh-cidr) just before it.
            try:
                if ctx.ssh is not None:
                    ctx.ssh.close()
            finally:
                host_base.close_ssh_access(ctx)


def operator_policy(deployment, profile=None):
    """The operator's least-privilege policy for ``deployment``, as JSON, in the account
    the credentials are for (reading it needs no permission: sts:GetCallerIdentity)."""
    ctx = SimpleNamespace(aws=AWS(deployment.region, profile))
    identity = account.caller(ctx)
    return json.dumps(operator.policy(deployment, identity["account"],
                                      identity["partition"]), indent=2)


def production_access(deployment, options):
    """--request-production-access: file (with --plan, describe) the SES request."""
    if not options.get("request_production_access"):
        raise ConfigError("--use-case means something only with "
                          "--request-production-access.", "Add it, or drop --use-case.")
    if not deployment.domain:
        raise ConfigError("The deployment has no --domain: AWS asks for the site's URL.",
                          "Run aws_configure with --domain first.")
    others = [f"--{name.replace('_', '-')}" for name in (
        "destroy", "operator_policy", "stop", "start", "rollback", "releases")
        if options.get(name)]
    if others:
        raise ConfigError(f"--request-production-access does not go with {others[0]}.",
                          "Run it alone.")
    with phase("the production access request", "Nothing was requested; run it again."):
        return sending.request_production_access(AWS(deployment.region, options.get("profile")),
                                                 deployment, options.get("use_case"),
                                                 plan=options.get("plan"))


# (option, the option it only works with)
DEPENDENT_OPTIONS = (("delete_backups", "destroy"), ("no_backup", "destroy"),
                     ("no_snapshot", "destroy"))
HOST_ONLY_OPTIONS = tuple((o, "skip_host") for o in ("git_url", "git_ref", "server",
                                                     "ca_bundle"))


def check_options(deployment, options):
    missing = [params.flag_name(n) for n in ("domain", "email") if not getattr(deployment, n)]
    if missing:
        raise ConfigError(f"The deployment has no {' and no '.join(missing)}.",
                          "Run aws_configure with them first, e.g. --domain vote.example.org "
                          "--email elections@example.org.")
    for fingerprint in (options.get("trust_host_key") or "").replace(",", " ").split():
        if not TRUSTED_FINGERPRINT_RE.match(fingerprint):
            raise ConfigError(f"--trust-host-key {fingerprint!r} is not an OpenSSH SHA256 "
                              "fingerprint.",
                              "Give it as ssh-keygen -lf prints it: SHA256: and 43 characters "
                              "(several separated by commas).")
    port = options.get("ssh_port")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"--ssh-port {port} is not a TCP port.", "Use 1-65535.")
    # Options that mean something only with another one are refused without it, never
    # silently ignored.
    for option, needs in DEPENDENT_OPTIONS:
        if options.get(option) and not options.get(needs):
            flag, needed = (f"--{n.replace('_', '-')}" for n in (option, needs))
            raise ConfigError(f"{flag} means something only with {needed}: without it, "
                              "nothing would be done with it.",
                              f"Add {needed}, or drop {flag}.")
    for option, other in HOST_ONLY_OPTIONS:
        if options.get(option) and options.get(other):
            flag = f"--{option.replace('_', '-')}"
            raise ConfigError(f"{flag} is for the server's software, which --skip-host leaves "
                              "alone: it would be ignored.", f"Drop {flag} or --skip-host.")
    if options.get("skip_aws") and options.get("skip_host"):
        raise ConfigError("--skip-aws and --skip-host together leave nothing to do.",
                          "Drop one of them.")
    if options.get("rollback") and options.get("releases"):
        raise ConfigError("--rollback and --releases are two actions.", "Give one of them.")
    day_two = next((a for a in ("rollback", "releases") if options.get(a)), None)
    aws_action = next((a for a in ("destroy", "stop", "start") if options.get(a)), None)
    if day_two and (aws_action or options.get("skip_host")):
        other = aws_action or "skip_host"
        raise ConfigError(f"--{day_two} works on the server; --{other.replace('_', '-')} "
                          "does not go with it.", f"Drop --{other.replace('_', '-')}.")
    if options.get("plan") and (options.get("stop") or options.get("start")):
        raise ConfigError("--plan does not go with --stop or --start.",
                          "Run --stop or --start alone (each says what it changed).")
    if options.get("skip_aws") and any(options.get(a) for a in ("destroy", "stop", "start")):
        raise ConfigError("--destroy, --stop and --start act on AWS; --skip-aws forbids it.",
                          "Drop --skip-aws.")
    others = [f"--{o.replace('_', '-')}" for o in ("plan", "skip_aws", "rollback", "releases")
              if options.get(o)]
    if options.get("test_alert") and others:
        raise ConfigError(f"--test-alert sends one alert and does nothing else; {others[0]} "
                          "does not go with it.", f"Drop {others[0]}.")


def make_context(deployment, out_dir, options, out):
    """The run's context: AWS clients for the deployment's region (or --region, already
    in ``deployment``) and --profile, the state file, and a log with secrets redacted."""
    ctx = Context(deployment, out_dir, aws=AWS(deployment.region, options.get("profile")),
                  options=options, out=out)
    env = envfile.read(ctx.out_dir / ENV_NAME)
    for key in envfile.SECRET_KEYS:
        ctx.secret(env.get(key))

    def log_call(service, operation, call_params):
        text = repr(call_params)
        if len(text) > LOGGED_PARAMS_LENGTH:
            text = text[:LOGGED_PARAMS_LENGTH] + "..."
        ctx.log.info("aws %s.%s %s", service, operation, text)

    ctx.aws.observe(log_call)
    return ctx


def _host_half(ctx):
    return [] if ctx.options.get("skip_host") else host_steps.steps(ctx)


def provision(ctx, out):
    """The default action: every step that is not skipped."""
    chosen = [] if ctx.options.get("skip_aws") else aws_steps(ctx.deployment)
    return apply(ctx, out, chosen, _host_half(ctx))


def apply(ctx, out, aws, host=()):
    """Check and plan the ``aws`` steps, then run them and the ``host`` steps; returns the
    runner's results."""
    if aws:
        preflight(ctx, aws, out)
    else:
        facts_from_state(ctx)
    results = Runner(list(aws) + list(host), ctx, out).apply()
    if out.verbosity >= 2 and aws:
        show_costs(ctx, aws, out)
    finish(ctx, out, summary(results))
    return results


def preflight(ctx, steps, out):
    """Read and plan every AWS step, printing nothing: whatever a step refuses is refused
    before any step has changed anything. Reads are cached for the run, so the steps that
    follow do not ask AWS twice."""
    warn_world_ssh(ctx, out)
    out.detail("Checking the deployment against AWS before changing anything...")
    with phase("the check of the deployment against AWS, before any change",
               "Nothing was changed; run the same command again."):
        return Runner(steps, ctx, Output(lambda text: None)).plan()


def warn_world_ssh(ctx, out):
    cidr = ctx.deployment.ssh_cidr
    if cidr and params.is_world(cidr):
        out.line(f"Warning: --ssh-cidr {cidr} opens SSH (port 22) to the whole internet. "
                 "Prefer your own address as a /32.", "WARNING")


def facts_from_state(ctx):
    """With --skip-aws, what the AWS half recorded last time, for the host half."""
    address = ctx.state.get("elastic_ip") or {}
    if address.get("public_ip"):
        ctx.facts["host"] = address["public_ip"]
    host_key = ctx.state.get("host_key") or {}
    if host_key.get("fingerprints"):
        publish_host_key(ctx, host_key)
    key_file = ctx.out_dir / KEY_FILE
    if key_file.exists():
        ctx.facts["ssh_key_file"] = str(key_file)


def finish(ctx, out, text):
    for item in ctx.facts.get("notes", []):
        out.line(f"Note: {ctx.redactor.redact(item)}", "WARNING")
    ctx.log.info("summary: %s", text)
    out.line(f"Done: {text}.", "SUCCESS")


def show_costs(ctx, steps, out):
    lines = [line for step in steps if isinstance(step, AWSStep)
             for line in step.cost_lines(ctx)]
    if lines:
        source = ctx.facts.get("instance_price_source")
        out.line("Estimated monthly cost (USD, on demand):")
        if source:
            out.line(f"  The instance's price: from {source}; the others from "
                     f"{pricing.TABLE}.")
        for row in pricing.table(lines):
            out.line(row)


def show_plan(ctx, out):
    """--plan: what every step would do and what it would cost; changes nothing."""
    out.line(ctx.deployment.os_summary)
    out.line(ssh_access.mode_line(ctx.deployment))
    aws = [] if ctx.options.get("skip_aws") else aws_steps(ctx.deployment)
    if aws:
        warn_world_ssh(ctx, out)
        rows = Runner(aws, ctx, out).plan()
        show_costs(ctx, aws, out)
    else:
        facts_from_state(ctx)
        rows = []
    host = _host_half(ctx)
    if host:
        plan_host_half(ctx, out, host, rows)
    for item in ctx.facts.get("notes", []):
        out.line(f"Note: {ctx.redactor.redact(item)}", "WARNING")
    out.line("Plan only: nothing was changed.", "SUCCESS")
    return rows


# A plan waits this long for sshd (unless --ssh-wait says otherwise): a server that does
# not answer is reported, not waited for as a run waits for a booting one.
PLAN_SSH_WAIT = 15


def plan_host_half(ctx, out, host, rows):
    """The host half's plan, read from the server as it is now, whenever there is one to
    reach (AWS changes pending or not); else a sentence saying why it cannot be read."""
    pending = [step.name for step, change in rows if change.action != KEEP]
    instance = next((change for step, change in rows if isinstance(step, InstanceStep)), None)
    if not ctx.options.get("host"):
        if instance is not None and instance.action == CREATE:
            out.line(f"The host half ({len(host)} steps) is not planned: there is no server "
                     "yet (aws_provision creates the instance first, then runs it).")
            return
        if not ctx.facts.get("host"):
            out.line(f"The host half ({len(host)} steps) is not planned: no address of the "
                     "server is known (no Elastic IP in AWS or in state.json; give --host).")
            return
    if pending:
        out.line(f"The host half, read from the server as it is now (the AWS changes above "
                 f"come first: {', '.join(pending)}):")
    if ctx.options.get("ssh_wait") is None:
        ctx.options["ssh_wait"] = PLAN_SSH_WAIT
    try:
        Runner(host, ctx, out).plan()
    except HostError as exc:
        out.line(f"The host half ({len(host)} steps) cannot be planned: "
                 f"{ctx.redactor.redact(exc.message)}", "WARNING")
        if exc.hint:
            out.line(f"  {ctx.redactor.redact(exc.hint)}")


def destroy(ctx, out, confirm):
    """--destroy: a final backup (unless --no-backup), a snapshot of the root volume
    (unless --no-snapshot), then delete what the deployment made in reverse order and list
    whatever tagged for it remains. With --plan, only say all that, with the costs."""
    d = ctx.deployment
    ctx.facts["destroying"] = True  # the steps read what a teardown needs in full
    steps = aws_steps(d)
    with phase("the reading of what the deployment has in AWS",
               "Nothing was deleted; run --destroy again."):
        current = [(step, step.read(ctx)) for step in steps]
        doomed = [line for step, state in current for line in step.teardown(ctx, state)]
    if ctx.options.get("plan"):
        with phase("the plan of --destroy", "Nothing was changed."):
            show_destroy_plan(ctx, out, current, doomed)
        return []
    with phase("the teardown (--destroy)", "Some resources may be deleted already: run "
               "--destroy again to delete the rest (it lists what remains)."):
        return _teardown(ctx, out, confirm, current, doomed)


def _instance(current):
    return next((s, c) for s, c in current if isinstance(s, InstanceStep))


def outline_destroy(ctx, out, current, doomed):
    """What --destroy does, in order: the final backup, the snapshot, each deletion; and
    what stays. Printed by --destroy --plan and above the --destroy confirmation."""
    d = ctx.deployment
    _, instance = _instance(current)
    server = instance["instance"] is not None
    kept_bucket = [] if ctx.options.get("delete_backups") else backups.leftovers(ctx)
    if server and not ctx.options.get("no_backup"):
        where = "the backup bucket" if kept_bucket else "the deployment's backup bucket"
        out.line(f"1. A final backup of the server (database and uploaded files) to {where}; "
                 "if it fails, nothing is deleted (--no-backup skips it).")
    elif server:
        out.line("1. No final backup (--no-backup): what changed since the last backup is "
                 "lost.", "WARNING")
    else:
        out.line("1. No final backup: there is no server.")
    if server and not ctx.options.get("no_snapshot"):
        out.line("2. A snapshot of the root volume, kept (about "
                 f"${pricing.snapshot_month(d.volume_size):.2f}/month at most).")
    elif server:
        out.line("2. No snapshot (--no-snapshot): the server's disk is lost for good.",
                 "WARNING")
    else:
        out.line("2. No snapshot: there is no server.")
    out.line(f"3. Deleted, in AWS account {ctx.facts['account']} ({ctx.aws.region}):")
    for line in doomed or ["nothing: none of the deployment's resources exists"]:
        out.line(f"     - {line}")
    # What stops costing: the server, its disk and its address (the hosted zone is not
    # the deployment's, and the bucket has its own line).
    ended = [line for step, state in current
             if step.teardown(ctx, state) and not isinstance(step, (DNSStep, BackupBucketStep))
             for line in step.cost_lines(ctx)]
    if ended:
        out.line("   Monthly cost that ends (USD):")
        for row in pricing.table(ended):
            out.line(f"   {row}")
    out.line("Kept:")
    if server and not ctx.options.get("no_snapshot"):
        out.line(f"  - the snapshot of the root volume (up to "
                 f"${pricing.snapshot_month(d.volume_size):.2f}/month)")
    for text, usd in kept_bucket:
        out.line(f"  - {text} (${usd:.2f}/month before the final backup)")
    if (ctx.out_dir / KEY_FILE).exists():
        out.line(f"  - the private key {ctx.out_dir / KEY_FILE}, and every file in "
                 f"{ctx.out_dir}")
    out.line("  - the Route 53 hosted zone (not the deployment's; "
             f"${pricing.HOSTED_ZONE_MONTH:.2f}/month)")


def show_destroy_plan(ctx, out, current, doomed):
    out.line(f"aws_provision --destroy would, for deployment {ctx.deployment.name}:")
    outline_destroy(ctx, out, current, doomed)
    out.line("Plan only: nothing was changed.", "SUCCESS")


def _teardown(ctx, out, confirm, current, doomed):
    d = ctx.deployment
    if not doomed:
        out.line(f"Nothing of deployment {d.name} exists in AWS ({ctx.aws.region}).")
    else:
        out.line(f"--destroy, for deployment {d.name}:")
        outline_destroy(ctx, out, current, doomed)
        instance_step, instance = _instance(current)
        snapshot = not ctx.options.get("no_snapshot") and instance["instance"] is not None
        with phase("the --destroy confirmation", "Nothing was destroyed."):
            confirmed = confirm(f"Type the deployment name ({d.name}) to destroy it", d.name)
        if not confirmed:
            out.line("Cancelled: nothing was destroyed.", "WARNING")
            return []
        ctx.log.info("destroy confirmed: %s", doomed)
        if instance["instance"] is not None:
            server_gate(ctx, "--destroy")(doomed)
        backup_commands.final_backup(ctx, out, instance["instance"])
        if snapshot:
            with Activity(out, ctx, "snapshot of the root volume"):
                snapshot_id = instance_step.snapshot(ctx, instance)
            out.line(f"snapshot {snapshot_id} of the root volume: completed", "SUCCESS")
        with Activity(out, ctx, f"deleting what deployment {d.name} made"):
            for step, state in reversed(current):
                for line in step.destroy(ctx, state):
                    out.line(line)
                    ctx.log.info("destroy: %s", line)
                ctx.state.save()
    remaining = inventory.leftovers(ctx) + backups.leftovers(ctx) + watch.leftovers(ctx)
    report_leftovers(ctx, out, remaining)
    return remaining


def report_leftovers(ctx, out, remaining):
    tag = f"helios-aws:deployment={ctx.deployment.name}"
    if not remaining:
        out.line(f"Nothing tagged {tag} remains in {ctx.aws.region}.", "SUCCESS")
        return
    out.line(f"Still there, tagged {tag}:")
    for text, usd in remaining:
        cost = "free" if usd is None else f"${usd:.2f}/month"
        out.line(f"  - {text} ({cost})")
        ctx.log.info("left: %s", text)


def list_releases(ctx, out):
    """--releases: the releases on the server, newest first; changes nothing."""
    facts_from_state(ctx)
    connect, releases = rollback.steps(ctx, "releases")
    Runner([connect], ctx, out).plan()
    current = releases.read(ctx)
    if not current["releases"]:
        out.line("No release is on the server yet.")
    for release in current["releases"]:
        out.line("  " + rollback.describe(release, current["serving"]))
    return current["releases"]


def roll_back(ctx, out):
    """--rollback: back to the previous installed release (with --plan, only say so)."""
    facts_from_state(ctx)
    chosen = rollback.steps(ctx, "rollback")
    if ctx.options.get("plan"):
        rows = Runner(chosen, ctx, out).plan()
        out.line("Plan only: nothing was changed.", "SUCCESS")
        return rows
    results = Runner(chosen, ctx, out).apply()
    finish(ctx, out, summary(results))
    return results


def stop_or_start(ctx, out, action):
    """--stop / --start: the guide's advice for servers used now and then."""
    step = InstanceStep()
    current = step.read(ctx)
    if action == "stop" and current["instance"] is not None and \
            current["instance"]["State"]["Name"] != "stopped":
        server_gate(ctx, "--stop")([f"stop {current['instance']['InstanceId']}"])
    if action == "stop":  # before the site goes down, or its alarm would page
        switch_alarms(ctx, out, action)
    with Activity(out, ctx, f"{action} {step.name}"):
        message = getattr(step, action)(ctx, current)
    out.line(message, "SUCCESS")
    if action == "start":  # once the server passes its status checks again
        switch_alarms(ctx, out, action)
    if action == "stop":
        d = ctx.deployment
        out.line(f"While stopped the instance costs nothing; its volume (about "
                 f"${pricing.gp3_month(d.volume_size):.2f}/month) and the Elastic IP "
                 f"(${pricing.public_ipv4_month():.2f}/month) still do.")
    ctx.log.info("%s: %s", action, message)


# A server that has run for a while answers SSH at once or not at all.
SERVER_GATE_SSH_WAIT = 2


def server_gate(ctx, action):
    """The election freeze for an action on the instance itself (--stop, --destroy):
    asked over SSH, on a server that has been up for a while (it answers at once)."""
    from .host.base import connection

    if not ctx.facts.get("host"):
        facts_from_state(ctx)
    if ctx.options.get("ssh_wait") is None:
        ctx.options["ssh_wait"] = SERVER_GATE_SSH_WAIT
    return freeze.Gate(ctx.deployment, ctx.options, action, lambda: connection(ctx),
                       ctx=ctx, say=ctx.notice)


def switch_alarms(ctx, out, action):
    """--stop disables the alarms' actions (a stopped server must not page, nor be
    recovered); --start enables them."""
    with Activity(out, ctx, f"{'disable' if action == 'stop' else 'enable'} the alarms"):
        alarms = watch.set_alarm_actions(ctx, enabled=action == "start")
    if alarms:
        out.line(alarms, "SUCCESS")
        ctx.log.info("%s: %s", action, alarms)


def send_test_alert(ctx, out):
    """--test-alert: one alert through the deployment's topic, as an alarm sends it."""
    account.AccountStep().read(ctx)
    with phase("--test-alert", "Run aws_provision --test-alert again."):
        told = watch.test_alert(ctx)
    if told:
        out.line(f"Sent a test alert to {', '.join(told)}.", "SUCCESS")
    else:
        out.line("Sent a test alert, but no address has confirmed its subscription: it "
                 "reached nobody (aws_check says which are waiting).", "WARNING")
    ctx.log.info("test alert: %s", told)
    return told
