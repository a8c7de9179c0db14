"""Writing files safely: atomically, with the right mode from the first byte."""

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

from .errors import ConfigError


TEMPORARY_SUFFIX = ".tmp"


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
def exclusive(directory):
    """Hold the deployment directory for one command at a time.

    The lock is on the directory itself (no lock file appears), and the kernel drops it
    when the process ends, however it ends. Once it is held, the temporary files of a
    write that a killed run left half-way are removed. A directory that does not exist
    yet has nothing to protect.
    """
    directory = Path(directory)
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"Another helios-aws command is working on {directory} right now.",
                "Let it finish (or stop it), then run this command again.") from None
        for leftover in directory.rglob(f".*{TEMPORARY_SUFFIX}"):
            if leftover.is_file():
                leftover.unlink()
        yield
    finally:
        os.close(fd)
