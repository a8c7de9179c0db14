"""Writing files safely: atomically, with the right mode from the first byte."""

import contextlib
import errno
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
    by others, not even for an instant. A ``path`` that is a symbolic link is refused:
    replacing it would silently turn the link into a regular file beside its target.
    An OS error (a full disk, a read-only file system, permissions) becomes a ConfigError
    naming the file, and leaves the old file and no temporary file behind.
    """
    path = Path(path)
    refuse_symlinks([path])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                   suffix=TEMPORARY_SUFFIX)
    except OSError as exc:
        raise os_error(exc, path.parent) from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise os_error(exc, path) from None
        raise
    return path


def refuse_symlinks(paths):
    """Refuse, before anything is written, to replace a symbolic link among ``paths``
    (a .env or a key kept elsewhere and linked here) by a regular file."""
    for path in map(Path, paths):
        if path.is_symlink():
            raise ConfigError(
                f"{path} is a symbolic link (to {os.readlink(path)}); helios-aws writes "
                "its files in place and will not replace a link with a file.",
                "Put the file itself in its place (e.g. cp --remove-destination "
                f"\"$(readlink -f {path})\" {path}), or use an --output directory that "
                "holds the real files.")


# What to do about the OS errors a user can meet while files are written.
OS_ERROR_HINTS = {
    errno.ENOSPC: "The disk is full: free space on it (df -h {where}), then run the "
                  "command again; nothing was half-written.",
    errno.EDQUOT: "Your disk quota is used up: free space, then run the command again.",
    errno.EROFS: "The file system is read-only: remount it read-write or use another "
                 "--output directory.",
    errno.EACCES: "Fix the permissions of {where} (or run as its owner), or use another "
                  "--output directory.",
    errno.EPERM: "Fix the permissions of {where} (or run as its owner), or use another "
                 "--output directory.",
}


def os_error(exc, where, action="write"):
    """A ConfigError for an OSError met while trying to ``action`` ``where``."""
    hint = OS_ERROR_HINTS.get(exc.errno, "Check {where} and the file system it is on, then "
                                         "run the command again.")
    reason = exc.strerror or str(exc)
    return ConfigError(f"Cannot {action} {where}: {reason}.", hint.format(where=where))


def check_writable(directory):
    """Fail early, before anything is written, when ``directory`` cannot take files."""
    directory = Path(directory)
    probe = directory
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{directory} cannot be created: {probe} is not a directory.",
                          "Give another --output directory.")
    if os.statvfs(probe).f_flag & os.ST_RDONLY:
        raise ConfigError(f"{directory} is on a read-only file system.",
                          OS_ERROR_HINTS[errno.EROFS])
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{directory} is not writable.",
                          "Give another --output directory or fix its permissions.")


def read_text(path):
    """The text of ``path``, or ``None`` when there is no such file.

    A file that is not UTF-8 or cannot be read is a ConfigError naming it and the fix."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}).",
            "Convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8) or restore it; "
            "helios-aws writes and reads its files as UTF-8.") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror}.",
                          f"Fix the permissions of {path} or run as its owner.") from None


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
