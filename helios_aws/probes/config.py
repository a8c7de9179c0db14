"""The configuration area: Django's system checks (deploy ones included) as report lines.

Every ``helios_aws`` check is listed, passed or not; other apps' checks are listed when
they report something. Helios's two known false positives are explained rather than
counted: ``security.W003`` (Helios checks CSRF in its own views) and ``security.W004``
(HSTS comes from Helios's middleware, which the live probe ``site.W001`` confirms).

The checks must read the *deployment's* settings. Helios reads its settings from the
environment when its settings module is imported, so when this process was started with
another .env, the checks run in a child ``manage.py aws_check --local`` started with the
deployment's .env, as the server's units start Helios.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .. import checks as helios_checks, envfile, layout
from .base import FAIL, INFO, PASS, SKIP, WARN, WARNING, ERROR, Result

AREA = "config"
CHILD_TIMEOUT = 60.0  # Django's start-up with all of Helios's imports, on a slow machine
# Django's messages that are wrong about Helios, each with the explanation reported
# instead, and what must hold for it to be a false positive.
FALSE_POSITIVES = {
    "security.W003": (
        "Helios's known false positive: Helios checks CSRF in its own views against a "
        "token kept in the session, so CsrfViewMiddleware is off by design.",
        lambda: True),
    "security.W004": (
        "Helios's known false positive: Helios's HSTSMiddleware sends "
        "Strict-Transport-Security instead of SECURE_HSTS_SECONDS; the live probe "
        "site.W001 confirms the header.",
        helios_checks.hsts_enabled),
}


def _level(message):
    from django.core import checks

    if message.level >= checks.ERROR:
        return ERROR, FAIL
    if message.level >= checks.WARNING:
        return WARNING, WARN
    return INFO, PASS


def _result(check_id, level, status, message, hint=""):
    return Result(check_id, AREA, level, status, message, hint or "")


def _from_message(message):
    level, status = _level(message)
    explanation, holds = FALSE_POSITIVES.get(message.id, (None, None))
    if explanation and holds():
        return _result(message.id, level, PASS, explanation)
    return _result(message.id or "?", level, status, message.msg,
                   message.hint if status != PASS else "")


def _silenced(messages, ours):
    """One skipped line per id of another app that SILENCED_SYSTEM_CHECKS hid."""
    hidden = {}
    for message in messages:
        if message.is_silenced() and message.id not in ours:
            hidden.setdefault(message.id, []).append(message)
    return [_result(check_id, _level(found[0])[0], SKIP,
                    f"{len(found)} message(s) silenced by SILENCED_SYSTEM_CHECKS.")
            for check_id, found in sorted(hidden.items())]


def run_system_checks():
    """Run every system check, deploy ones included, on this process's settings."""
    from django.conf import settings
    from django.core import checks

    started = time.monotonic()
    # Like `manage.py check`, the project's SILENCED_SYSTEM_CHECKS are not findings (the
    # real Helios silences dozens of urls.W002): each silenced id is one skipped line.
    everything = checks.run_checks(include_deployment_checks=True)
    messages = [m for m in everything if not m.is_silenced()]
    silenced = set(settings.SILENCED_SYSTEM_CHECKS)
    results = []
    for constant, title in helios_checks.MESSAGES:
        fired = [m for m in messages if m.id == constant.id]
        if fired:
            results.extend(_from_message(m) for m in fired)
        elif constant.id in silenced:
            results.append(_result(constant.id, _level(constant)[0], SKIP,
                                   "Silenced by SILENCED_SYSTEM_CHECKS."))
        else:
            results.append(_result(constant.id, _level(constant)[0], PASS, title))
    ours = {constant.id for constant, _ in helios_checks.MESSAGES}
    results.extend(_from_message(m) for m in sorted(messages, key=lambda m: m.id or "")
                   if m.id not in ours)
    results.extend(_silenced(everything, ours))
    seconds = time.monotonic() - started
    for result in results:
        result.seconds = seconds
    return results


def loaded_env_file():
    path = helios_checks.env_file_path()
    return Path(path).resolve() if path else None


def uses_env_file(env_file):
    """Whether this process's settings were loaded from ``env_file``."""
    return loaded_env_file() == Path(env_file).resolve()


def child_environment(env_file):
    """The environment a server unit gives Helios: the .env's own values win over this
    process's environment, and the overlay settings module loads it."""
    defined = set(envfile.parse(Path(env_file).read_text(encoding="utf-8")))
    env = {k: v for k, v in os.environ.items() if k not in defined}
    env["HELIOS_ENV_FILE"] = str(Path(env_file).resolve())
    env["DJANGO_SETTINGS_MODULE"] = layout.SETTINGS_MODULE
    return env


def run_in_child(project_root, env_file, timeout, extra_args=()):
    """Run ``aws_check --local`` under the deployment's .env; return its results."""
    started = time.monotonic()
    argv = [sys.executable, "manage.py", "aws_check", "--local", "--format", "json",
            *extra_args]
    try:
        completed = subprocess.run(argv, cwd=project_root, env=child_environment(env_file),
                                   capture_output=True, text=True, timeout=timeout,
                                   stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return [_result("config", ERROR, FAIL,
                        f"The configuration checks did not finish within {timeout:g} s.",
                        "Run `manage.py check --deploy` with HELIOS_ENV_FILE pointing at "
                        "the deployment's .env to see why.")]
    try:
        report = json.loads(completed.stdout)
    except ValueError:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
        return [_result("config", ERROR, FAIL,
                        f"Django could not start with {env_file}: " + " | ".join(tail),
                        "Run `manage.py check --deploy` with HELIOS_ENV_FILE pointing at "
                        "the deployment's .env to see the full error.")]
    seconds = time.monotonic() - started
    return [Result(c["id"], c["area"], c["level"], c["status"], c["message"],
                   c.get("hint") or "", seconds) for c in report["checks"]]


def missing_env(env_file):
    return _result("config", ERROR, SKIP, f"No .env at {env_file}: the deployment's "
                   "configuration cannot be checked.",
                   "Run aws_configure (or give the --output directory it wrote to).")
