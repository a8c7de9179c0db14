"""The seal of an election: a record of what serves it, written when it freezes, and the
comparison of the live server with it (``python -I -m helios_aws.sealside ACTION``).

Runs as root on the host, from root's own virtualenv, with an empty environment:
``write`` from ``helios-seal.timer`` (every minute), ``drift`` from ``aws_check`` over
SSH (read only). It reads only root's files and the release (root's once installed): the
``current`` link, the files nginx serves voters' browsers from the release (the booth and
the verifier), the release's tree and its virtualenv's package metadata (read as data:
no code of the release runs), the nginx site, the units, the OS package database, and
the .env **read as the service user** (only its digest is kept, never a value). The
database is read as for the freeze (:mod:`helios_aws.freezeside`).

Why a timer: the seal must exist from the minute an election freezes, whether or not an
operator runs anything (during an election they should not), and only root can read
what it digests and write where nginx publishes it; a root timer does that without any
SSH connection or operator.

A seal is written once per election and never rewritten (``O_EXCL``): to
``/var/lib/helios-aws/seals/NAME.json`` (root's), to ``/var/www/helios-seal/NAME.json``
(published by nginx at ``https://DOMAIN/.well-known/helios-seal/NAME.json``) and to the
bucket under ``PREFIX/audit/seals/`` with its SHA-256 checksum (Object Lock keeps it).
"""

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import elections, freezeside, rootside
from .aws.session import call
from .errors import HeliosAWSError

SEAL_DIR = "/var/lib/helios-aws/seals"
PUBLISH_DIR = "/var/www/helios-seal"
PUBLISHED_PATH = "/.well-known/helios-seal/"
# What voters' browsers run, as nginx serves it: URL prefix -> directory of the release.
BROWSER_TREES = {"/booth/": "heliosbooth", "/verifier/": "heliosverifier"}
SKIPPED_DIRS = {".venv", "__pycache__", ".git"}
FROZEN_SQL = (f"SELECT coalesce(json_agg(short_name ORDER BY short_name)::text, '[]') "
              f"FROM {elections.TABLE} WHERE frozen_at IS NOT NULL AND encrypted_tally IS NULL")


def _sha(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root, skip=()):
    """Regular files and links under ``root``, relative, sorted; links are not followed."""
    found = []
    for directory, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        for name in names:
            found.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(found)


def _entry(path):
    if os.path.islink(path):
        return "link:" + os.readlink(path)
    return _sha(path) if os.path.isfile(path) else "missing"


def tree_digest(root):
    lines = "".join(f"{rel}\0{_entry(os.path.join(root, rel))}\n"
                    for rel in _files(root, SKIPPED_DIRS))
    return hashlib.sha256(lines.encode()).hexdigest()


def python_packages(release):
    """{name: version} from the release's virtualenv's package metadata (data only)."""
    found = {}
    venv = Path(release, ".venv")
    for meta in sorted(venv.glob("lib/python*/site-packages/*.dist-info/METADATA")):
        fields = {}
        for line in meta.read_text(errors="replace").splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        if fields.get("Name"):
            found[fields["Name"].lower()] = fields.get("Version", "")
    return found


def os_packages():
    """{name: version} from the OS package database (dpkg or rpm)."""
    if shutil.which("dpkg-query", path=rootside.SAFE_PATH):
        argv = ["dpkg-query", "-W", "-f", "${Package}\t${Version}\n"]
    elif shutil.which("rpm", path=rootside.SAFE_PATH):
        argv = ["rpm", "-qa", "--qf", "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}\n"]
    else:
        raise HeliosAWSError("Neither dpkg nor rpm is on this host: the OS packages cannot "
                             "be listed.", "Nothing was written.")
    result = subprocess.run(argv, env=rootside.clean_env(), capture_output=True, text=True,
                            cwd="/", stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise HeliosAWSError(f"{argv[0]} failed: {result.stderr.strip()}", "Nothing was written.")
    return dict(line.split("\t", 1) for line in sorted(result.stdout.splitlines())
                if "\t" in line)


def env_digest(env_file, user):
    result = subprocess.run(rootside.as_user(user, ["cat", "--", str(env_file)]),
                            env=rootside.clean_env(), capture_output=True, cwd="/",
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise HeliosAWSError(f"Cannot read {env_file} as {user or 'root'}.",
                             "Nothing was written.")
    return hashlib.sha256(result.stdout).hexdigest()


def what_serves(args, user):
    """The record of what serves now (without the election's name and time)."""
    current = Path(args.current)
    release = os.path.realpath(current)
    browser = {}
    for url, directory in BROWSER_TREES.items():
        tree = Path(release, directory)
        for rel in _files(tree):
            browser[url + rel] = _entry(tree / rel)
    return {
        "release": {"id": os.path.basename(release), "tree_sha256": tree_digest(release)},
        "browser_files": browser,
        "nginx_site": {str(p): _entry(p) for p in args.nginx_site},
        "units": {str(p): _entry(p) for p in sorted(Path(args.unit_dir).glob("helios*"))
                  + sorted(Path(args.unit_dir).glob("gunicorn.*"))},
        "env_sha256": env_digest(args.env_file, user),
        "python_packages": python_packages(release),
        "os_packages": os_packages(),
    }


def flatten(record):
    """{what: value} of a record's parts, each named as a person reads it."""
    flat = {"release id": record["release"]["id"],
            "release tree": record["release"]["tree_sha256"],
            "the .env": record["env_sha256"]}
    for part, label in (("browser_files", "browser file"), ("nginx_site", "nginx site"),
                        ("units", "unit"), ("python_packages", "Python package"),
                        ("os_packages", "OS package")):
        for key, value in record[part].items():
            flat[f"{label} {key}"] = value
    return flat


def differences(sealed, live):
    a, b = flatten(sealed), flatten(live)
    return [f"{key}: sealed {a.get(key, 'absent')}, now {b.get(key, 'absent')}"
            for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def _exclusive(path, text, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(path, mode)


def write_seals(args, config, db, user, say):
    """A seal for each frozen election that has none yet; returns their names."""
    frozen = json.loads(db.query(FROZEN_SQL).strip())
    seal_dir, publish = Path(args.seal_dir), Path(args.publish_dir)
    todo = [name for name in frozen if not (seal_dir / f"{name}.json").exists()]
    if not todo:
        return []
    serving = what_serves(args, user)
    at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for name in todo:
        text = json.dumps({"election": name, "sealed_at": at, **serving}, indent=1,
                          sort_keys=True) + "\n"
        if config.bucket:  # (without a backup bucket, the host's copies are the seal)
            key = f"{config.prefix}/{freezeside.AUDIT_FOLDER}/seals/{name}.json"
            call(f"put the seal s3://{config.bucket}/{key}", config.s3().put_object,
                 Bucket=config.bucket, Key=key, Body=text.encode(),
                 ContentType="application/json", ServerSideEncryption="AES256",
                 ChecksumAlgorithm="SHA256")
        _exclusive(seal_dir / f"{name}.json", text, 0o600)
        publish.mkdir(parents=True, exist_ok=True)
        os.chmod(publish, 0o755)
        published = publish / f"{name}.json"
        if not published.exists():
            _exclusive(published, text, 0o644)
        say(f"sealed {name}: release {serving['release']['id']}")
    return todo


def drift(args, config, db, user):
    """{election: [differences]} for every open election (a missing seal is one)."""
    found = {}
    live = None
    for election in freezeside.open_elections(config, db):
        path = Path(args.seal_dir) / f"{election.short_name}.json"
        if not path.exists():
            found[election.short_name] = ["no seal was written"]
            continue
        live = live or what_serves(args, user)
        found[election.short_name] = differences(json.loads(path.read_text()), live)
    return found


def arguments(argv):
    parser = argparse.ArgumentParser(prog="python -I -m helios_aws.sealside")
    parser.add_argument("action", choices=("write", "drift"))
    parser.add_argument("--config", required=True)
    parser.add_argument("--env-file", required=True)
    parser.add_argument("--current", required=True)
    parser.add_argument("--unit-dir", required=True)
    parser.add_argument("--nginx-site", action="append", default=[])
    parser.add_argument("--seal-dir", default=SEAL_DIR)
    parser.add_argument("--publish-dir", default=PUBLISH_DIR)
    parser.add_argument("--time-zone", default="")
    parser.add_argument("--service-user", default="")
    return parser.parse_args(argv)


def main(argv=None):
    args = arguments(sys.argv[1:] if argv is None else argv)
    try:
        config, db, _ = freezeside._load(args)
        user = config.service_user if config.service_user not in ("", "root") else ""
        if args.action == "write":
            write_seals(args, config, db, user, lambda text: sys.stdout.write(text + "\n"))
        else:
            sys.stdout.write(json.dumps(drift(args, config, db, user)) + "\n")
        return 0
    except HeliosAWSError as exc:
        sys.stderr.write(f"{exc.message}\n{exc.hint}\n" if exc.hint else f"{exc.message}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
