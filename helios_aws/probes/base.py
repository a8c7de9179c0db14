"""The probe contract, the registry and the concurrent runner.

A probe is a function of a :class:`Context` registered with a stable id whose prefix is
its area and whose letter is its level: ``site.E002`` is an error-level probe of the site,
``site.W001`` a warning-level one. It returns :func:`passed` or :func:`failed` (or
:func:`warned` for a lesser finding of an error-level probe, e.g. a certificate that
expires in two weeks), or raises :class:`Skip` when it cannot run: skipped is never passed.

The runner starts every selected probe at once in a thread pool and bounds each one by
its timeout; a probe that has not answered by then, or whose target ran out of time, is
reported as failed (never skipped), with a hint about reaching the target.
"""

import concurrent.futures
import dataclasses
import re
import threading
import time

from ..errors import HeliosAWSError, HostTimeout, StepTimeout

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
STATUSES = (PASS, WARN, FAIL, SKIP)
ERROR, WARNING, INFO = "error", "warning", "info"
LEVEL_LETTERS = {"E": ERROR, "W": WARNING}
AREAS = ("config", "site", "aws", "host", "mail", "seal")
PROBE_ID_RE = re.compile(r"^(site|aws|host|mail|seal)\.([EW])(\d{3})$")
DEFAULT_TIMEOUT = 15.0

REGISTRY = {}


NETWORK_HINT = ("Check that the service runs and that the address, the port and the "
                "security group (aws.E005) let this machine in.")
# What to look at when a probe's target did not answer in time (not the probe's remedy,
# which is about the thing checked, not about reaching it).
TIMEOUT_HINTS = {
    "config": "Django did not finish starting with the deployment's settings: run "
              "`manage.py check --deploy` with HELIOS_ENV_FILE set to see where it hangs.",
    "site": NETWORK_HINT + " Or allow more time with --timeout.",
    "aws": "Check this machine's connection to the AWS endpoints (or AWS_ENDPOINT_URL), "
           "or allow more time with --timeout.",
    "host": "The host or a service on it did not answer in time: check that it runs and "
            "is not overloaded (`uptime`, `free -m` over SSH), that the database and the "
            "broker answer, or allow more time with --timeout.",
    "mail": "Check this machine's connection to the SES endpoint, or allow more time "
            "with --timeout.",
    "seal": "The host or its database did not answer in time: check that it runs and that "
            "PostgreSQL answers, or allow more time with --timeout.",
}


class Skip(Exception):
    """The probe cannot run here; the message says why (no credentials, no state...)."""

    def __init__(self, message, hint=""):
        super().__init__(message)
        self.hint = hint


@dataclasses.dataclass(frozen=True)
class Finding:
    """What a probe found: a status (pass/warn/fail), a message and, for problems, a hint."""

    status: str
    message: str
    hint: str = ""


def passed(message):
    return Finding(PASS, message)


def failed(message, hint=""):
    """The problem the probe looks for; its level decides whether it is a fail or a warn."""
    return Finding(FAIL, message, hint)


def warned(message, hint=""):
    return Finding(WARN, message, hint)


@dataclasses.dataclass(frozen=True)
class Probe:
    id: str
    title: str
    hint: str
    func: object
    timeout: float = DEFAULT_TIMEOUT
    needs: float = 0.0  # what --timeout never cuts it below (a cold start of Helios)

    @property
    def area(self):
        return self.id.split(".", 1)[0]

    @property
    def level(self):
        return LEVEL_LETTERS[PROBE_ID_RE.match(self.id).group(2)]

    def limit(self, timeout=None):
        """Its deadline: ``timeout`` (--timeout) or its own, never under what it needs."""
        return max(timeout or self.timeout, self.needs)


def probe(probe_id, title, hint, timeout=DEFAULT_TIMEOUT, needs=0.0):
    """Register the decorated function as the probe ``probe_id``, bounded by ``timeout``
    seconds, and never by fewer than ``needs`` whatever --timeout says."""
    if not PROBE_ID_RE.match(probe_id):
        raise ValueError(f"bad probe id {probe_id!r}")

    def register(func):
        if probe_id in REGISTRY:
            raise ValueError(f"probe id {probe_id} registered twice")
        REGISTRY[probe_id] = Probe(probe_id, title, hint, func, timeout, needs)
        return func

    return register


@dataclasses.dataclass
class Result:
    """One line of the report, and one object of the JSON schema (docs/checks.md)."""

    id: str
    area: str
    level: str
    status: str
    message: str
    hint: str = ""
    seconds: float = 0.0

    def as_json(self):
        return {"id": self.id, "area": self.area, "level": self.level,
                "status": self.status, "message": self.message, "hint": self.hint or None,
                "seconds": round(self.seconds, 3)}


class Shared:
    """Values computed once per run and shared by probes in other threads.

    ``get(key, factory)`` runs ``factory`` in the first probe that asks and makes the
    others wait for it; an exception (a :class:`Skip`, say) is remembered and raised
    again in every probe that asks.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._entries = {}

    def get(self, key, factory):
        with self._lock:
            entry = self._entries.get(key)
            owner = entry is None
            if owner:
                entry = self._entries[key] = {"event": threading.Event()}
        if owner:
            try:
                entry["value"] = factory()
            except BaseException as exc:
                entry["error"] = exc
            finally:
                entry["event"].set()
        else:
            entry["event"].wait()
        if "error" in entry:
            raise entry["error"]
        return entry["value"]

    def value(self, key):
        """What ``key`` holds if it was computed without error, else None."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or not entry["event"].is_set():
            return None
        return entry.get("value")


def _finding_to_result(item, finding, seconds):
    status = finding.status
    if status == FAIL and item.level == WARNING:
        status = WARN
    return Result(item.id, item.area, item.level, status, finding.message,
                  finding.hint or (item.hint if status in (WARN, FAIL) else ""), seconds)


def run_one(item, ctx):
    """Run one probe in this thread and turn whatever happens into a :class:`Result`."""
    started = time.monotonic()
    try:
        finding = item.func(ctx)
    except Skip as exc:
        return Result(item.id, item.area, item.level, SKIP, str(exc), exc.hint,
                      time.monotonic() - started)
    except (HostTimeout, StepTimeout) as exc:  # it ran, and its target did not answer
        return _finding_to_result(item, failed(exc.message, TIMEOUT_HINTS[item.area]),
                                  time.monotonic() - started)
    except HeliosAWSError as exc:
        # AWS or the host refused in a way the probe did not expect: it could not run.
        return Result(item.id, item.area, item.level, SKIP, f"Could not run: {exc.message}",
                      exc.hint or "", time.monotonic() - started)
    except OSError as exc:  # refused, reset, timed out, TLS handshake failure...
        return _finding_to_result(item, failed(f"Could not reach it: {exc}.", NETWORK_HINT),
                                  time.monotonic() - started)
    except Exception as exc:  # a probe's own bug must show, never pass
        return Result(item.id, item.area, item.level, FAIL,
                      f"The probe itself failed: {type(exc).__name__}: {exc}",
                      "Report this as a bug of helios-aws.", time.monotonic() - started)
    return _finding_to_result(item, finding, time.monotonic() - started)


def run(probes, ctx, tasks=(), timeout=None):
    """Run ``probes`` (and extra ``tasks``: callables returning lists of results)
    concurrently; return the results in the order given, probes first.

    Each probe is bounded by ``timeout`` (default: its own); one that has not finished by
    then is reported as failed, and its thread is left to end on its own socket timeouts.
    """
    probes = list(probes)
    tasks = list(tasks)
    if not probes and not tasks:
        return []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(probes) + len(tasks),
                                                 thread_name_prefix="helios-aws-check")
    started = time.monotonic()
    try:
        task_futures = [pool.submit(task) for task in tasks]
        probe_futures = [(item, pool.submit(run_one, item, ctx)) for item in probes]
        results = []
        for item, future in probe_futures:
            limit = item.limit(timeout)
            remaining = max(0.0, started + limit - time.monotonic())
            try:
                results.append(future.result(timeout=remaining))
            except concurrent.futures.TimeoutError:
                results.append(_finding_to_result(
                    item, failed(f"No answer within {limit:g} s.", TIMEOUT_HINTS[item.area]),
                    limit))
        for future in task_futures:
            results.extend(future.result())
        return results
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def select(only=(), skip=()):
    """The registered probes chosen by ``--only`` / ``--skip`` (areas or ids)."""
    return [p for p in REGISTRY.values()
            if (not only or matches(p.id, p.area, only)) and not matches(p.id, p.area, skip)]


def matches(check_id, area, tokens):
    return any(token in (check_id, area) for token in tokens)


def area_wanted(area, only=(), skip=()):
    """Whether ``--only``/``--skip`` leave anything of ``area`` to run. A token that is
    neither an area nor a probe id is a system check id, of the config area."""
    if area in skip:
        return False
    if not only or area in only:
        return True
    return any(token.split(".", 1)[0] == area or (
        area == "config" and token not in AREAS and token not in REGISTRY) for token in only)


@dataclasses.dataclass
class Target:
    """Where the site probes connect, and what the site is configured to say.

    ``address`` is where to connect (default: the domain, through DNS); ``http_port`` and
    ``https_port`` the ports to connect to there; ``public_https_port`` the HTTPS port the
    site's own redirects name (the deployment's, which differs behind a port forward).
    """

    domain: str
    address: str
    http_port: int
    https_port: int
    public_http_port: int
    public_https_port: int
    ca_file: str = ""


class Context:
    """What probes share: the deployment, its recorded state, how to reach it, and values
    computed once per run (:class:`Shared`).

    ``aws`` and ``ssh`` are factories (or ready objects) for the AWS session and the SSH
    connection; they are built on first use, once, by whichever probe asks first.
    """

    def __init__(self, deployment, state=None, target=None, timeout=DEFAULT_TIMEOUT,
                 static_file="", celery_app="", aws=None, ssh=None, test_email=None):
        self.deployment = deployment
        self.state = dict(state or {})
        self.target = target
        self.timeout = timeout
        self.static_file = static_file
        self.celery_app = celery_app
        self.test_email = test_email
        self.voters = None  # aws_check --voters N (None: count them on the host)
        self.shared = Shared()
        self._aws = aws
        self._ssh = ssh

    def once(self, key, factory):
        return self.shared.get(key, factory)

    def aws(self):
        """The AWS session, or :class:`Skip` when there is no way to reach AWS."""
        return self.once("aws", lambda: _ready(self._aws, "No AWS access was configured."))

    def ssh(self):
        """The SSH connections to the host, or :class:`Skip` when there is no host."""
        return self.once("ssh", lambda: _ready(
            self._ssh, "No host to connect to: give --host, or run aws_provision first."))

    def close(self):
        """Close the SSH connections opened during the run."""
        pool = self.shared.value("ssh")
        if pool is not None:
            pool.close()


def _ready(value, missing):
    if value is None:
        raise Skip(missing)
    return value() if callable(value) else value
