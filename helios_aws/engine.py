"""Plan-then-apply provisioning: small idempotent steps under one contract.

A step reads the current state, says what would change, changes only that, and reports
``created`` / ``updated`` / ``unchanged`` (or ``failed``). The AWS half and the host half
are both lists of steps run by the same :class:`Runner`, so ``--plan``, progress lines,
the log and resumption behave the same for both. A running step shows it is alive
(:class:`Activity`): its line appears when it starts, counts the elapsed time on a
terminal, and a "still running" line with what the step says it is doing
(:meth:`Context.progress`) comes every 30 s in a pipe and in the log.

State lives in ``state.json`` in the output directory, saved after every step, but for AWS
the tags are the truth: a step finds its resource by tag first, so a lost state file or an
interrupted run never leads to duplicates.
"""

import contextlib
import json
import logging
import shutil
import threading
import time
from pathlib import Path

from . import records
from .errors import ConfigError, HeliosAWSError
from .files import read_text, write_atomic
from .host.release import url_secrets

STATE_NAME = "state.json"
LOG_NAME = "provision.log"

CREATE, UPDATE, KEEP, ADOPT = "create", "update", "keep", "adopt"
CREATED, UPDATED, UNCHANGED, FAILED = "created", "updated", "unchanged", "failed"
# An existing resource taken into the state file (found by its tag): nothing changed in it.
ADOPTED = "adopted"
# Left for the next run, which does it (e.g. a host key AWS has not published yet).
DEFERRED = "deferred"
# How often a running step shows it is alive: a "still running" line in a pipe or the log,
# and a rewrite of its line with the elapsed time on a terminal.
HEARTBEAT = 30
TICK = 1


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the sentence that says what it interrupted and how to go on."""


@contextlib.contextmanager
def phase(what, then):
    """Name what the command does inside this block (``what``) and how to go on if Ctrl-C
    interrupts it (``then``); the innermost phase names the interruption."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(f"Interrupted during {what}. {then}") from None


class Change:
    """What a step would do: an action and human-readable details (never secrets)."""

    def __init__(self, action, *details):
        self.action = action
        self.details = [d for d in details if d]

    def __repr__(self):
        return f"Change({self.action!r}, {self.details!r})"


class Step:
    """One idempotent unit of provisioning.

    Subclasses set ``name`` and implement :meth:`read`, :meth:`plan` and :meth:`apply`.
    ``read`` must not change anything; it may record facts for later steps in
    ``ctx.facts`` (ids, addresses). ``plan`` compares the state with what the deployment
    wants. ``apply`` is only called when the plan is not ``keep``; it returns ``created``
    or ``updated``. Errors are raised as :class:`~helios_aws.errors.HeliosAWSError`.
    """

    name = ""

    def read(self, ctx):
        raise NotImplementedError

    def plan(self, ctx, current):
        raise NotImplementedError

    def apply(self, ctx, current, change):
        raise NotImplementedError

    def monthly_cost(self, ctx):
        """Estimated USD per month of what this step keeps in existence, or None."""
        return None


class State:
    """The state file: resource ids and facts worth keeping between runs."""

    def __init__(self, path):
        self.path = Path(path)
        text = read_text(self.path)
        fix = ("It records the AWS resources of the deployment: fix that field by hand, or "
               "move the file away and run aws_provision, which adopts the tagged resources.")
        try:
            data = json.loads(text) if text else {}
        except ValueError as exc:
            raise ConfigError(f"{self.path} is not valid JSON ({exc}).", fix)
        self.data = records.check(data, records.STATE, str(self.path), fix, ConfigError)
        self._saved = self._serialize()

    def _serialize(self):
        return json.dumps(self.data, indent=2, sort_keys=True) + "\n"

    def get(self, key, default=None):
        return self.data.get(key, default)

    def set(self, key, value):
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value

    def save(self):
        """Write the file when its content changed (a run that changed nothing, or failed
        before changing anything, leaves it as it was)."""
        text = self._serialize()
        if text != self._saved:
            write_atomic(self.path, text, mode=0o600)
            self._saved = text


class Redactor(logging.Filter):
    """Replaces every registered secret value in log records."""

    MASK = "********"

    def __init__(self):
        super().__init__()
        self.secrets = set()

    def add(self, value):
        if value and len(value) >= 4:
            self.secrets.add(value)

    def redact(self, text):
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, self.MASK)
        return text

    def filter(self, record):
        record.msg = self.redact(record.getMessage())
        record.args = ()
        return True


class Context:
    """What steps share: the deployment, files, state, facts, AWS and SSH access."""

    def __init__(self, deployment, out_dir, aws=None, ssh=None, options=None, out=None):
        self.deployment = deployment
        self.out_dir = Path(out_dir)
        self.state = State(self.out_dir / STATE_NAME)
        self.facts = {}
        self.aws = aws
        self.ssh = ssh
        self.ssh_access = None  # port 22 opened for this run (aws/ssh_access.py)
        self.options = options or {}
        self.redactor = Redactor()
        self.log = _file_logger(self.out_dir / LOG_NAME, self.redactor)
        self.out = out
        self.activity = None
        # Called with (step, change) before any step's change is applied: the election
        # freeze (helios_aws.freeze) refuses there.
        self.before_change = None
        for secret in url_secrets(self.options.get("git_url")):
            self.secret(secret)

    def secret(self, value):
        """Register a value that must never appear in output or the log; returns it."""
        self.redactor.add(value)
        return value

    def notice(self, message):
        """A warning always shown (the operator should know), and logged."""
        message = self.redactor.redact(message)
        self.log.warning(message)
        if self.out is not None:
            self.out.line(message, "WARNING")

    def say(self, message):
        """A line shown at normal verbosity (e.g. what the run waits for), and logged."""
        message = self.redactor.redact(message)
        self.log.info(message)
        if self.out is not None and self.out.verbosity >= 1:
            self.out.line(message)

    def progress(self, text):
        """What the running step is doing now (``installing 12/80 packages``): shown with
        its elapsed time on a terminal, in its heartbeat lines, and in the log."""
        if self.activity is not None:
            self.activity.progress(self.redactor.redact(text))

    def detail(self, message):
        """A line shown at --verbosity 2, and always logged."""
        message = self.redactor.redact(message)
        self.log.info(message)
        if self.out is not None:
            self.out.detail(message)


class _LogFile(logging.FileHandler):
    """The run log. A line it cannot write (a full disk) is dropped rather than printed
    with a traceback: the state file's next write reports the disk as a clean error."""

    def handleError(self, record):
        pass


def _file_logger(path, redactor):
    logger = logging.getLogger(f"helios_aws.run.{path}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handler = _LogFile(path, encoding="utf-8")
    # UTC, marked: Django sets the process's zone from TIME_ZONE (Helios's is not UTC).
    formatter = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(message)s",
                                  "%Y-%m-%d %H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(redactor)
    logger.addHandler(handler)
    path.chmod(0o600)
    return logger


class Output:
    """Progress for the user: one line per step, details at verbosity 2.

    ``write`` writes one line. ``terminal``, when the output is a terminal, writes text as
    it is (no line end): the running step's line is then rewritten in place with its
    elapsed time every ``tick`` seconds, and removed before any other line is written.
    Elsewhere (a pipe, a CI log) a running step says it is alive every ``heartbeat``
    seconds with a line of its own.
    """

    def __init__(self, write, verbosity=1, style=None, terminal=None, heartbeat=HEARTBEAT,
                 tick=TICK):
        self.write = write
        self.verbosity = verbosity
        self.style = style
        self.terminal = terminal
        self.heartbeat = heartbeat
        self.tick = tick
        self._lock = threading.RLock()
        self._status = None

    def line(self, text, kind=None):
        if self.style is not None and kind:
            text = getattr(self.style, kind)(text)
        with self._lock:
            shown = self._status
            self.status(None)
            self.write(text)
            self.status(shown)

    def detail(self, text):
        if self.verbosity >= 2:
            self.line("      " + text)

    def status(self, text):
        """On a terminal, show ``text`` as the line rewritten in place (None removes it);
        nothing elsewhere, or at verbosity 0."""
        if self.terminal is None or self.verbosity < 1:
            return
        with self._lock:
            if text is None and self._status is None:
                return
            width = max(shutil.get_terminal_size().columns - 1, 20)
            self.terminal("\r\x1b[K" + (text or "")[:width])
            self._status = text


def duration(seconds):
    """``45s``, ``2m05s``: short enough for a line rewritten every second."""
    seconds = int(seconds)
    return f"{seconds}s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"


class Activity:
    """A running step, visibly alive: its line appears when it starts; a thread rewrites
    it with the elapsed time on a terminal, and writes a "still running" line to a pipe
    and to the log every heartbeat, with what the step last said it was doing."""

    def __init__(self, out, ctx, label):
        self.out = out
        self.ctx = ctx
        self.log = ctx.log
        self.label = label
        self.doing = ""
        self.started = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name=f"helios-aws {label}")

    def __enter__(self):
        self.ctx.activity = self
        self.log.info("%s: started", self.label)
        if self.out.terminal is not None:
            self.out.status(self.running())
        elif self.out.verbosity >= 1:
            self.out.line(f"{self.label} ...")
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stopped.set()
        self._thread.join()
        self.out.status(None)
        self.ctx.activity = None

    def progress(self, text):
        self.doing = text

    def running(self):
        text = f"{self.label}: running, {duration(time.monotonic() - self.started)}"
        return f"{text}; {self.doing}" if self.doing else text

    def _beat(self):
        live = self.out.terminal is not None
        next_beat = self.started + self.out.heartbeat
        while not self._stopped.wait(min(self.out.tick, self.out.heartbeat) if live
                                     else max(next_beat - time.monotonic(), 0)):
            if live:
                self.out.status(self.running())
            if time.monotonic() >= next_beat:
                next_beat += self.out.heartbeat
                text = (f"{self.label}: still running after "
                        f"{duration(time.monotonic() - self.started)}")
                text += f"; {self.doing}" if self.doing else ""
                self.log.info(text)
                if not live and self.out.verbosity >= 1:
                    self.out.line(text)


class StepFailed(HeliosAWSError):
    """A step failed; the message names the step and what went wrong."""


class Runner:
    """Runs steps in order: :meth:`plan` only reads, :meth:`apply` changes what differs."""

    def __init__(self, steps, ctx, out):
        self.steps = list(steps)
        self.ctx = ctx
        self.out = out

    def _label(self, index, step):
        width = len(str(len(self.steps)))
        return f"[{index:>{width}}/{len(self.steps)}] {step.name}"

    def plan(self):
        """Read every step and return [(step, change)]; changes nothing."""
        rows = []
        for index, step in enumerate(self.steps, 1):
            current = step.read(self.ctx)
            change = step.plan(self.ctx, current)
            rows.append((step, change))
            kind = None if change.action == KEEP else "WARNING"
            self.out.line(f"{self._label(index, step)}: {change.action}", kind)
            for detail in change.details:
                self.out.line(f"      {self.ctx.redactor.redact(detail)}")
            self.ctx.log.info("plan %s: %s %s", step.name, change.action, change.details)
        return rows

    def apply(self):
        """Run every step; returns [(step, outcome, seconds)]. Stops at the first failure."""
        results = []
        self.ctx.log.info("run started: %d steps", len(self.steps))
        for index, step in enumerate(self.steps, 1):
            started = time.monotonic()
            label = self._label(index, step)
            try:
                with Activity(self.out, self.ctx, label):
                    current = step.read(self.ctx)
                    change = step.plan(self.ctx, current)
                    for detail in change.details:
                        self.ctx.detail(detail)
                    if change.action == KEEP:
                        outcome = UNCHANGED
                    else:
                        gate = getattr(self.ctx, "before_change", None)
                        if gate is not None:
                            gate(step, change)
                        outcome = step.apply(self.ctx, current, change) or (
                            CREATED if change.action == CREATE else UPDATED)
            except KeyboardInterrupt:
                self.ctx.state.save()
                self.ctx.log.warning("interrupted during %s", step.name)
                raise Interrupted(f"Interrupted during step {index} ({step.name}). Run the "
                                  "same command again: it resumes where it stopped and "
                                  "creates nothing twice.") from None
            except HeliosAWSError as exc:
                self.ctx.state.save()
                elapsed = time.monotonic() - started
                self.out.line(f"{label}: {FAILED} ({elapsed:.1f}s)", "ERROR")
                self.ctx.log.error("%s failed: %s", step.name, exc)
                raise StepFailed(f"Step {index} ({step.name}) failed: {exc.message}",
                                 exc.hint) from exc
            self.ctx.state.save()
            elapsed = time.monotonic() - started
            kind = {CREATED: "SUCCESS", UPDATED: "WARNING", DEFERRED: "WARNING"}.get(outcome)
            self.out.line(f"{label}: {outcome} ({elapsed:.1f}s)", kind)
            self.ctx.log.info("%s: %s in %.1fs", step.name, outcome, elapsed)
            results.append((step, outcome, elapsed))
        return results


def summary(results):
    """"no changes" when every step was unchanged, else counts per outcome."""
    counts = {}
    for _, outcome, _ in results:
        counts[outcome] = counts.get(outcome, 0) + 1
    if set(counts) <= {UNCHANGED}:
        return "no changes"
    return ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
