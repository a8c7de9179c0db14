"""What the three management commands share: flags, error translation, prompting."""

import functools
import os
import sys

from django.conf import settings
from django.core.management.base import CommandError

from . import params, project as project_mod
from .errors import HeliosAWSError


def translate_errors(handle):
    """Turn the project's own errors into CommandError (a message, a hint, exit 1)."""

    @functools.wraps(handle)
    def wrapper(self, *args, **options):
        try:
            return handle(self, *args, **options)
        except HeliosAWSError as exc:
            raise CommandError(str(exc)) from exc

    return wrapper


def settings_layer():
    return getattr(settings, "HELIOS_AWS", None)


def resolve_output(options):
    return params.output_dir(options.get("output"), project_mod.find_root())


def flag_values(options, names=None):
    return {n: options.get(n) for n in (names or params.FIELDS) if options.get(n) is not None}


def can_ask(options):
    return not options.get("no_input") and sys.stdin is not None and sys.stdin.isatty()


def ask(prompt, secret=False):
    if secret:
        import getpass

        return getpass.getpass(f"{prompt}: ").strip()
    return input(f"{prompt}: ").strip()


def secret_from(options, option_name, env_name):
    """A secret given by flag or, better (it stays out of the process list), by variable."""
    return options.get(option_name) or os.environ.get(env_name) or ""
