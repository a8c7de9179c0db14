"""What the three management commands share: flags, error translation, prompting."""

import functools
import logging
import os
import sys
import threading

from django.conf import settings
from django.core.management.base import CommandError

from . import files, params, project as project_mod
from .engine import Interrupted
from .errors import HeliosAWSError


INTERRUPTED_STATUS = 130  # 128 + SIGINT, as shells report a Ctrl-C


def translate_errors(handle):
    """Run a command's ``handle`` the way every command ends.

    The project's own errors become CommandError (a message, a hint, exit 1). Ctrl-C
    prints one line saying what it interrupted and how to go on (see
    :func:`engine.phase`), and exits with status 130, without a traceback. Output is
    line-buffered, so a pipe or a CI log sees each line when it is written.
    """

    @functools.wraps(handle)
    def wrapper(self, *args, **options):
        for stream in (sys.stdout, sys.stderr):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(line_buffering=True)
        try:
            return handle(self, *args, **options)
        except HeliosAWSError as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:
            if exc.filename is None:
                raise
            # A file the command reads or writes outside files.write_atomic/read_text.
            raise CommandError(str(files.os_error(exc, exc.filename, "use"))) from exc
        except UnicodeDecodeError as exc:
            # Likewise, a file read without files.read_text (which names it).
            raise CommandError(f"A file this command reads is not UTF-8 text (byte "
                               f"0x{exc.object[exc.start]:02x} at offset {exc.start}).\n"
                               "Hint: convert the files you gave it to UTF-8.") from exc
        except KeyboardInterrupt as exc:
            interrupted(self, exc)

    return wrapper


def interrupted(command, exc):
    """Say what Ctrl-C interrupted and end the process with status 130."""
    line = str(exc) if isinstance(exc, Interrupted) else \
        "Interrupted. Run the same command again when you are ready."
    command.stderr.write(line)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    logging.shutdown()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()
           if t is not threading.main_thread()):
        # Probe threads blocked on a socket would hold the exit until their timeouts.
        os._exit(INTERRUPTED_STATUS)
    sys.exit(INTERRUPTED_STATUS)


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
