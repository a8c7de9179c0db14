"""Live probes of a deployment and the report ``aws_check`` prints.

Areas: ``config`` (Django's system checks on the deployment's settings), ``site`` (DNS,
HTTP, TLS, headers), ``aws`` (the tagged resources), ``host`` (over SSH) and ``mail``
(the test e-mail). :func:`check` runs them concurrently and returns a
:class:`~helios_aws.probes.report.Report`; ids and the JSON schema are in docs/checks.md.
"""

import dataclasses
import re
import time
from pathlib import Path

from .. import params, project as project_mod
from ..aws import ssh_access
from ..aws.compute import KEY_FILE
from ..aws.session import AWS
from ..engine import STATE_NAME, State
from ..errors import ConfigError, HeliosAWSError
from . import aws, config, host, mail, site  # noqa: F401  (registers the probes)
from . import backup  # noqa: F401  (registers the backup probes)
from . import seal  # noqa: F401  (registers the election probes)
from . import alarms  # noqa: F401  (registers the alarm probes)
from . import mail_ready  # noqa: F401  (registers the SES readiness probes)
from .base import (
    AREAS, DEFAULT_TIMEOUT, REGISTRY, Context, Target, area_wanted, matches, run, select,
)
from .report import Report

CHECK_ID_RE = re.compile(r"^[\w.]+\.[CEWID]\d{3}\Z")
ENV_NAME = ".env"


@dataclasses.dataclass
class Options:
    """What ``aws_check`` was asked to do (see its --help)."""

    out_dir: Path = None
    local: bool = False
    only: tuple = ()
    skip: tuple = ()
    address: str = ""
    http_port: int = None
    https_port: int = None
    ca_file: str = ""
    timeout: float = None
    profile: str = ""
    test_email: str = ""
    host: str = ""
    ssh_port: int = None
    ssh_user: str = ""
    ssh_key: str = ""
    known_hosts: str = ""
    trust_host_key: tuple = ()
    settings_layer: dict = None
    ssh_from: str = ""
    voters: int = None


def validate_selection(tokens):
    """Refuse --only/--skip tokens that name no area, probe or check id."""
    for token in tokens:
        if token in AREAS or token in REGISTRY or (
                CHECK_ID_RE.match(token) and token.split(".", 1)[0] not in AREAS):
            continue
        raise ConfigError(f"--only/--skip: {token!r} is not an area or a check id.",
                          f"Areas: {', '.join(AREAS)}; ids like site.E002 or "
                          "helios_aws.E001 (docs/checks.md lists them).")


def parse_address(value):
    """``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT`` -> (host, port or None)."""
    match = re.match(r"^\[([0-9a-fA-F:.]+)\](?::(\d+))?\Z", value) or \
        re.match(r"^([^:\[\]\s]+)(?::(\d+))?\Z", value)
    if not match:
        raise ConfigError(f"--address {value!r} is not HOST or HOST:PORT.",
                          "Give e.g. 203.0.113.10, 127.0.0.1:8443 or [2001:db8::1]:443.")
    port = int(match.group(2)) if match.group(2) else None
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"--address {value!r}: the port is out of range.", "Use 1-65535.")
    return match.group(1), port


def static_sample(project):
    """The URL of one file of the static trees the URLconf serves, or "" when none."""
    for alias in sorted(project.static, key=lambda a: a.url):
        tree = project.root / alias.path
        files = sorted(p for p in tree.rglob("*") if p.is_file() and not p.name.startswith("."))
        if files:
            return alias.url + files[0].relative_to(tree).as_posix()
    return ""


def _project():
    """The Helios project's facts, or None when it cannot be read (the probes that need
    them are then skipped)."""
    try:
        return project_mod.inspect()
    except HeliosAWSError:
        return None


def _filter(results, options):
    return [r for r in results
            if (not options.only or matches(r.id, r.area, options.only))
            and not matches(r.id, r.area, options.skip)]


def _local_tasks(options):
    """System checks on this process's settings, and the test e-mail if asked."""
    tasks = [config.run_system_checks] if area_wanted("config", options.only,
                                                      options.skip) else []
    probes = [REGISTRY["mail.E001"]] if options.test_email and area_wanted(
        "mail", options.only, options.skip) else []
    return tasks, probes


def check(options):
    """Run the selected checks; return a :class:`Report`."""
    validate_selection(options.only)
    validate_selection(options.skip)
    if options.ssh_user and not params.POSIX_USER_RE.match(options.ssh_user):
        raise ConfigError(f"--ssh-user {options.ssh_user!r} is not a valid user name.",
                          "Use lowercase letters, digits, '_' and '-'.")
    started = time.monotonic()
    timeout = options.timeout or None
    if options.local:
        tasks, probes = _local_tasks(options)
        ctx = Context(None, timeout=timeout or DEFAULT_TIMEOUT, test_email=options.test_email)
        results = run(probes, ctx, tasks=tasks, timeout=timeout)
        return Report(_filter(results, options), time.monotonic() - started,
                      "this process's settings")

    out_dir = Path(options.out_dir)
    deployment = params.load(out_dir, None, options.settings_layer)
    env_file = out_dir / ENV_NAME
    project = _project()
    project_root = project.root if project else project_mod.find_root()
    state = State(out_dir / STATE_NAME).data
    ssh_notes = []
    ctx = Context(deployment,
                  state=state,
                  target=_target(deployment, options),
                  timeout=timeout or DEFAULT_TIMEOUT,
                  static_file=static_sample(project) if project else "",
                  celery_app=project.celery_app if project else "",
                  aws=lambda: _aws(deployment, options),
                  ssh=_ssh(deployment, state, out_dir, options, ssh_notes),
                  test_email=options.test_email)
    ctx.voters = options.voters
    probes = [p for p in select(options.only, options.skip) if p.id != "mail.E001"]
    tasks, local_probes = _local_tasks(options)
    if tasks or local_probes:
        if not env_file.is_file():
            tasks, local_probes = [lambda: [config.missing_env(env_file)]], []
        elif not config.uses_env_file(env_file):
            # Helios reads its settings at import: check them in a child started with
            # the deployment's .env, which also sends the test e-mail if asked.
            extra = ["--send-test-email", options.test_email] if local_probes else []
            child_timeout = max(timeout or DEFAULT_TIMEOUT, config.CHILD_TIMEOUT)
            tasks = [lambda: config.run_in_child(project_root, env_file, child_timeout,
                                                 extra)]
            local_probes = []
    probes += local_probes
    try:
        with ssh_access.ending_on_signals(deployment):
            results = run(probes, ctx, tasks=tasks, timeout=timeout)
    finally:
        ctx.close()
    report = Report(_filter(results, options), time.monotonic() - started,
                    f"{deployment.domain} (deployment in {out_dir})")
    report.notes = ssh_notes
    return report


def _target(deployment, options):
    """Where the site probes connect, or None when the deployment names no domain."""
    if not deployment.domain:
        return None
    host, port = parse_address(options.address) if options.address else (deployment.domain,
                                                                          None)
    if port and options.https_port and port != options.https_port:
        raise ConfigError("--address names a port and --https-port another.",
                          "Give the HTTPS port once.")
    if options.ca_file and not Path(options.ca_file).is_file():
        raise ConfigError(f"--ca-file {options.ca_file} does not exist.",
                          "Give the PEM file of the CA that issued the site's certificate.")
    return Target(
        domain=deployment.domain,
        address=host,
        http_port=options.http_port or deployment.http_port,
        https_port=port or options.https_port or deployment.https_port,
        public_http_port=deployment.http_port,
        public_https_port=deployment.https_port,
        ca_file=options.ca_file or "",
    )


def _ssh(deployment, state, out_dir, options, notes):
    """A factory of the SSH connection pool, or None when there is no host. Without
    --ssh-cidr, port 22 is opened to this machine first (what was done goes to
    ``notes``) and closed with the pool."""
    key = options.ssh_key or (out_dir / KEY_FILE if (out_dir / KEY_FILE).is_file() else None)
    connect = host.connector(
        deployment, state, host=options.host, port=options.ssh_port, user=options.ssh_user,
        key_file=key,
        known_hosts=[options.known_hosts] if options.known_hosts else [],
        trust_host_key=options.trust_host_key, timeout=options.timeout or DEFAULT_TIMEOUT)
    if connect is None:
        return None

    def open_pool():
        access = ssh_access.open_for(_aws(deployment, options), deployment,
                                     ssh_access.recorded_group(state), options.ssh_from,
                                     notes.append)
        pool = host.Pool(connect, on_close=access.close if access else None)
        try:
            return pool.open_first()
        except BaseException:
            pool.close()
            raise

    return open_pool


def _aws(deployment, options):
    return AWS(deployment.region, options.profile or None)
