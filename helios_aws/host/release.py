"""What goes into a release: the project's files, and helios-aws itself as a wheel.

The project's files are its tracked files (``git ls-files``) when it is a git checkout,
else every file except version control, virtualenvs, caches, the deployment's output
directory and a local ``.env``. Top-level ``.venv``, ``media`` and ``.helios-aws`` are left
out too: the deployment makes those in a release. They travel as one tar stream over SFTP.

The server cannot reach this machine, so helios-aws (this package) is shipped too, as a
wheel built here from the installed package's files: no build tool, no network, and the
same bytes for the same code, so an unchanged project yields an unchanged release.

A release is named by a digest of everything that makes it: the files, the wheel, and
how it is installed. Same digest, same release: a re-run installs nothing.
"""

import base64
import hashlib
import importlib.metadata
import io
import json
import os
import stat
import subprocess
import tarfile
import urllib.parse
import zipfile
from pathlib import Path

from .. import __version__
from ..errors import ConfigError

EXCLUDED_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "__pycache__", "node_modules",
                 ".mypy_cache", ".pytest_cache", ".tox", ".cache"}
# Top-level names the deployment makes in a release (the virtualenv, the link to the shared
# media) or made there before. The project's own (a local virtualenv, local uploads, or a
# link planted to aim the deployment's writes elsewhere) are never uploaded.
RESERVED_NAMES = (".helios-aws", ".venv", "media")
EXCLUDED_TOP = {".env", *RESERVED_NAMES}
DIST_NAME = "helios-aws"
WHEEL_DATE = (1980, 1, 1, 0, 0, 0)


def project_files(root, exclude=()):
    """Sorted relative POSIX paths of the files to deploy from ``root``.

    ``exclude`` holds directories (absolute or relative to root) left out on top of the
    usual ones, e.g. the deployment's output directory.
    """
    root = Path(root).resolve()
    skipped = []
    for path in exclude:
        path = (root / path).resolve()
        if path.is_relative_to(root) and path != root:
            skipped.append(path.relative_to(root).as_posix())
    tracked = _git_files(root)
    if tracked is None:
        tracked = _walk(root)
    files = []
    for rel in tracked:
        parts = rel.split("/")
        if parts[0] in EXCLUDED_TOP:
            continue
        if any(part in EXCLUDED_DIRS for part in parts[:-1]):
            continue
        if any(rel == s or rel.startswith(s + "/") for s in skipped):
            continue
        if (root / rel).is_file() or (root / rel).is_symlink():
            files.append(rel)
    if not files:
        raise ConfigError(f"No files to deploy were found in {root}.",
                          "Run the command from the Helios checkout.")
    return sorted(files)


def _git_files(root):
    """The tracked files of the git checkout at root, or None when it is not one."""
    if not (root / ".git").exists():
        return None
    try:
        result = subprocess.run(["git", "-C", str(root), "ls-files", "-z"],
                                capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return [p for p in result.stdout.decode().split("\0") if p]


def _walk(root):
    found = []
    for directory, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in EXCLUDED_DIRS)
        rel_dir = Path(directory).relative_to(root)
        found += [(rel_dir / name).as_posix() for name in names if not name.endswith(".pyc")]
    return found


def digest(root, files):
    """A digest of ``files`` under ``root``: paths, contents, symlink targets and the
    executable bit, not timestamps (a fresh checkout of the same commit gives the same)."""
    root = Path(root)
    total = hashlib.sha256()
    for rel in files:
        path = root / rel
        if path.is_symlink():
            total.update(f"L {rel} {os.readlink(path)}\n".encode())
            continue
        mode = "755" if os.stat(path).st_mode & stat.S_IXUSR else "644"
        total.update(f"F {rel} {mode} {hashlib.sha256(path.read_bytes()).hexdigest()}\n"
                     .encode())
    return total.hexdigest()


def archive(root, files):
    """A tar.gz (bytes) of ``files`` under ``root``, owned by root, modes 644 or 755."""
    root = Path(root)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for rel in files:
            info = tar.gettarinfo(str(root / rel), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.issym():
                tar.addfile(info)
                continue
            info.mode = 0o755 if info.mode & stat.S_IXUSR else 0o644
            with open(root / rel, "rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


def _package_dir():
    return Path(__file__).resolve().parent.parent


def wheel():
    """(file name, bytes) of a wheel of the installed helios-aws.

    Built from the package directory (editable or not), with the dependencies the
    installed distribution declares; deterministic for the same files.
    """
    package = _package_dir()
    try:
        dist = importlib.metadata.distribution(DIST_NAME)
        requires = [r for r in (dist.requires or []) if "extra ==" not in r]
        summary = dist.metadata.get("Summary", "")
        version = dist.version
    except importlib.metadata.PackageNotFoundError:
        requires, summary, version = [], "", __version__
    info_dir = f"helios_aws-{version}.dist-info"
    entries = []
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package.parent)
        if path.is_dir() or "__pycache__" in rel.parts or path.suffix in (".pyc", ".pyo"):
            continue
        entries.append((rel.as_posix(), path.read_bytes()))
    metadata = "\n".join(
        ["Metadata-Version: 2.1", f"Name: {DIST_NAME}", f"Version: {version}",
         f"Summary: {summary}"] + [f"Requires-Dist: {r}" for r in requires]) + "\n"
    wheel_file = ("Wheel-Version: 1.0\nGenerator: helios-aws\nRoot-Is-Purelib: true\n"
                  "Tag: py3-none-any\n")
    entries += [(f"{info_dir}/METADATA", metadata.encode()),
                (f"{info_dir}/WHEEL", wheel_file.encode())]
    record = "".join(
        f"{name},sha256={_urlsafe_digest(data)},{len(data)}\n" for name, data in entries)
    record += f"{info_dir}/RECORD,,\n"
    entries.append((f"{info_dir}/RECORD", record.encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive_file:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=WHEEL_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive_file.writestr(info, data)
    return f"helios_aws-{version}-py3-none-any.whl", buffer.getvalue()


def _urlsafe_digest(data):
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")


def release_id(*parts):
    """A short stable name for a release made of ``parts`` (digests and settings)."""
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def split_credentials(url):
    """``url`` without the user and password it may carry, and the git configuration
    (text for a private file, or ``None``) that sends them as an HTTP header instead: so
    a ``--git-url`` token never appears on a command line on the host, where any user
    can list it."""
    parts = urllib.parse.urlsplit(url or "")
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return url, None
    userinfo, _, address = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    header = base64.b64encode(pair.encode()).decode()
    public = urllib.parse.urlunsplit(parts._replace(netloc=address))
    return public, f"[http]\n\textraHeader = Authorization: Basic {header}\n"


def url_secrets(url):
    """What of ``url`` must be masked in output and logs: its credentials in every form
    they may appear in."""
    public, config = split_credentials(url)
    if config is None:
        return []
    userinfo = urllib.parse.urlsplit(url).netloc.rpartition("@")[0]
    password = userinfo.partition(":")[2]
    return [userinfo, password, urllib.parse.unquote(password), config.split()[-1]]
