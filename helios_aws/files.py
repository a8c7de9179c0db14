"""Writing files safely: atomically, with the right mode from the first byte."""

import contextlib
import fcntl
import os
import re
import tempfile
from pathlib import Path

from .errors import ConfigError


TEMPORARY_SUFFIX = ".tmp"
# tempfile.mkstemp(prefix=".NAME.", suffix=".tmp"): eight characters of its alphabet between.
TEMPORARY_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def write_atomic(path, text, mode=0o644):
    """Replace ``path`` with ``text`` so readers see the old file or the new one, never half.

    The temporary file is created with ``mode`` already set, so a secret is never readable
    by others, not even for an instant.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                   suffix=TEMPORARY_SUFFIX)
    except OSError as exc:
        raise ConfigError(f"Cannot write in {path.parent}: {exc.strerror}.",
                          "Choose a writable --output directory or fix its permissions.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def check_writable(directory):
    """Fail early, before anything is written, when ``directory`` cannot take files."""
    directory = Path(directory)
    probe = directory
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{directory} cannot be created: {probe} is not a directory.",
                          "Give another --output directory.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{directory} is not writable.",
                          "Give another --output directory or fix its permissions.")


def read_text(path):
    try:
        return Path(path).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None


@contextlib.contextmanager
def exclusive(directory, sweep=()):
    """Hold the deployment directory for one command at a time.

    The lock is on the directory itself (no lock file appears), and the kernel drops it
    when the process ends, however it ends. Once it is held, the temporary files that a
    killed run's :func:`write_atomic` left in ``directory`` and the ``sweep``
    directories are removed (only names of that exact form: nothing else is touched). A
    directory that does not exist yet has nothing to protect.
    """
    directory = Path(directory)
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        yield
        return
    except OSError as exc:
        raise ConfigError(f"Cannot open {directory}: {exc.strerror}.",
                          "Check the --output directory and its permissions.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"Another helios-aws command is working on {directory} right now.",
                "Let it finish (or stop it), then run this command again.") from None
        except OSError as exc:
            raise ConfigError(f"Cannot lock {directory}: {exc.strerror}.",
                              "Use an --output directory on a local file system.") from None
        for folder in {directory, *map(Path, sweep)}:
            remove_temporaries(folder)
        yield
    finally:
        os.close(fd)


def remove_temporaries(folder):
    """Remove what :func:`write_atomic` leaves when killed between creating its temporary
    file and renaming it: ``.NAME.XXXXXXXX.tmp`` files directly in ``folder``."""
    try:
        entries = list(Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if TEMPORARY_NAME.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            try:
                entry.unlink()
            except FileNotFoundError:
                pass
