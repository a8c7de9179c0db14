"""Backups of a deployment's database and uploaded files to S3, the restore drill that
proves them, and the restore into production.

This runs on the host, from the release's virtualenv, with the instance role's
credentials; nothing here needs Django's settings (the management commands pass the
database's connection settings and ``MEDIA_ROOT`` in).

Under the deployment's prefix (its name) the bucket holds::

    NAME/daily/STAMP/db.dump        pg_dump --format=custom
    NAME/daily/STAMP/media.tar      MEDIA_ROOT (voter files uploaded by administrators)
    NAME/daily/STAMP/manifest.json  time, sizes, SHA-256s, row counts, release, migrations
    NAME/safety/STAMP/...           taken before a restore by earlier versions (kept)
    NAME/final/STAMP/...            taken by ``aws_provision --destroy`` (kept)
    NAME/drills/STAMP.json          the result of each restore drill

Both archives are streamed straight into S3 multipart uploads: fixed-size parts, at most
:data:`PARTS_IN_FLIGHT` of them in memory, no temporary file, the SHA-256 computed on the
way. Nothing is written to the host's disk, so the dump is never there to be read.

Every object goes up with an S3 checksum (``ChecksumAlgorithm=SHA256``; a multipart
upload's is the composite of its parts' digests). A download is checked against both
the manifest's SHA-256 and the digest S3 holds for the version (:class:`Download`): the
manifest is as writable as the backup, S3's digest is computed by S3 from the bytes it
stored.
"""

import base64
import concurrent.futures
import dataclasses
import datetime
import hashlib
import itertools
import json
import os
import re
import subprocess
import tarfile
import threading
from pathlib import Path

from . import elections, records
from .aws.session import AWS, call, translate
from .errors import HeliosAWSError

PART_SIZE = 8 * 1024 * 1024
CHECKSUM = "SHA256"
PARTS_IN_FLIGHT = 2
KINDS = ("daily", "safety", "final")
DUMP, MEDIA, MANIFEST = "db.dump", "media.tar", "manifest.json"
DRILLS = "drills"
STAMP_FORMAT = "%Y-%m-%dT%H%M%SZ"
MANIFEST_VERSION = 1
CONFIG_PATH = "/var/lib/helios-aws/backup.json"
# Helios's own tables: the elections app and its login app.
TABLES_SQL = ("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
              "WHERE c.relkind IN ('r', 'p') AND n.nspname = 'public' "
              "AND c.relname LIKE 'helios\\_%' ORDER BY 1")
MIGRATIONS_SQL = ("SELECT md5(coalesce(string_agg(app || '.' || name, ',' "
                  "ORDER BY app, name), '')) FROM django_migrations")
ERROR_TAIL = 2000


class BackupError(HeliosAWSError):
    """A backup, drill or restore failed; what was half-made is gone or named."""


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def stamp(when):
    return when.strftime(STAMP_FORMAT)


def describe_age(delta):
    """A time span as people read it: hours up to two days, then days."""
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def parse_stamp(text):
    return datetime.datetime.strptime(text, STAMP_FORMAT).replace(tzinfo=datetime.timezone.utc)


# ------------------------------------------------------------------------- where


@dataclasses.dataclass(frozen=True)
class Config:
    """Where the deployment's backups go, as the host half writes it to
    :data:`CONFIG_PATH` (no credential: the instance role provides those)."""

    bucket: str
    prefix: str
    region: str
    service_user: str = ""
    units: tuple = ()
    # The zone Helios's database session stores election times in (elections.py), from
    # the project's settings when aws_provision wrote this file: root's side of a restore
    # runs no Django and needs it for the open-election guard.
    time_zone: str = ""

    @classmethod
    def load(cls, path=CONFIG_PATH):
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise BackupError(f"{path} is missing: this host has no backup configuration.",
                              "Run aws_provision (it creates the bucket and writes this "
                              "file), then try again.")
        except (OSError, ValueError) as exc:
            raise BackupError(f"Cannot read {path}: {exc}.", "Run aws_provision again.")
        records.check(data, records.BACKUP_CONFIG, str(path),
                      "Run aws_provision again (it writes this file).", BackupError)
        return cls(bucket=data["bucket"], prefix=data["prefix"], region=data["region"],
                   service_user=data.get("service_user") or "",
                   units=tuple(data.get("units") or ()),
                   time_zone=data.get("time_zone") or "")

    def as_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    def s3(self):
        return AWS(self.region).client("s3")

    def folder(self, kind, when):
        return f"{self.prefix}/{kind}/{stamp(when)}/"

    def normalise(self, key):
        """``--backup`` as the operator gives it (a stamp, ``daily/STAMP``, the folder or
        its manifest's key) -> the backup's folder ``NAME/KIND/STAMP/``."""
        text = key.strip().strip("/")
        if text.endswith("/" + MANIFEST):
            text = text[: -len(MANIFEST) - 1]
        if text.startswith(self.prefix + "/"):
            text = text[len(self.prefix) + 1:]
        if "/" not in text:
            text = f"daily/{text}"
        kind, _, when = text.partition("/")
        if kind not in KINDS or not re.fullmatch(r"\d{4}-\d\d-\d\dT\d{6}Z", when):
            raise BackupError(f"--backup {key!r} names no backup.",
                              "Give one that aws_backup --list shows, e.g. "
                              f"{self.prefix}/daily/2026-12-02T031500Z.")
        return f"{self.prefix}/{kind}/{when}/"


# ------------------------------------------------------------------------- database


def row_counts(query):
    """{table: rows} of Helios's tables, counted in one statement; ``query(sql)`` returns
    psql's unaligned output."""
    tables = query(TABLES_SQL).split()
    if not tables:
        return {}
    sql = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM public.\"{t}\"" for t in tables)
    return {table: int(count) for table, _, count in
            (line.partition("|") for line in query(sql).splitlines())}


@dataclasses.dataclass(frozen=True)
class Database:
    """How the PostgreSQL client programs reach one database: libpq parameters and, on a
    host where this runs as root, the OS user to run them as (peer authentication); and
    the time zone Helios's Django session gives its stored times (see elections.py)."""

    name: str
    host: str = ""
    port: str = ""
    user: str = ""
    password: str = ""
    sslmode: str = ""
    run_as: str = ""
    time_zone: str = ""

    @classmethod
    def from_django(cls, settings_dict, run_as="", time_zone=""):
        options = settings_dict.get("OPTIONS") or {}
        return cls(name=settings_dict.get("NAME") or "", host=settings_dict.get("HOST") or "",
                   port=str(settings_dict.get("PORT") or ""),
                   user=settings_dict.get("USER") or "",
                   password=settings_dict.get("PASSWORD") or "",
                   sslmode=options.get("sslmode", ""), run_as=run_as, time_zone=time_zone)

    def other(self, name, run_as=None):
        """The same server's database ``name``."""
        return dataclasses.replace(self, name=name,
                                   run_as=self.run_as if run_as is None else run_as)

    def env(self):
        env = dict(os.environ)
        for variable, value in (("PGHOST", self.host), ("PGPORT", self.port),
                                ("PGUSER", self.user), ("PGPASSWORD", self.password),
                                ("PGSSLMODE", self.sslmode)):
            if value:
                env[variable] = value
        env["PGDATABASE"] = self.name
        return env

    def argv(self, program, *args):
        prefix = []
        if self.run_as and os.geteuid() == 0:
            prefix = ["runuser", "-u", self.run_as, "--"]
        return prefix + [program, *args]

    def run(self, program, *args, input=None):
        """Run a client program to completion; its stdout, or BackupError with its
        stderr."""
        result = subprocess.run(self.argv(program, *args), env=self.env(), input=input,
                                capture_output=True, text=True, cwd="/")
        if result.returncode != 0:
            raise BackupError(f"{program} {' '.join(args[:1])} on database {self.name} "
                              f"failed: {result.stderr.strip()[-ERROR_TAIL:]}",
                              "See the message above.")
        return result.stdout

    def query(self, sql):
        return self.run("psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql).strip()

    def row_counts(self):
        return row_counts(self.query)

    def migrations(self):
        return self.query(MIGRATIONS_SQL)

    def open_elections(self):
        """Short names of the elections open for voting now (elections.py's definition);
        ElectionsUnreadable when that cannot be decided."""
        return elections.open_now(elections.read(self.query, self.time_zone))


# ------------------------------------------------------------------------- streaming


class Upload:
    """A file-like writer that becomes one S3 object through a multipart upload.

    Parts of :data:`PART_SIZE` go up in a small thread pool while the caller keeps
    writing; at most :data:`PARTS_IN_FLIGHT` parts (plus the one being filled) are in
    memory at once, whatever the object's size. ``close()`` completes the upload; on any
    error the upload is aborted, so no partial object ever appears.
    """

    def __init__(self, s3, bucket, key, part_size=PART_SIZE):
        self.s3, self.bucket, self.key, self.part_size = s3, bucket, key, part_size
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._buffer = bytearray()
        self._parts = []
        self._upload_id = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=PARTS_IN_FLIGHT)
        self._slots = threading.BoundedSemaphore(PARTS_IN_FLIGHT)

    def writable(self):
        return True

    def write(self, data):
        self.sha256.update(data)
        self.size += len(data)
        self._buffer += data
        while len(self._buffer) >= self.part_size:
            self._send(bytes(self._buffer[:self.part_size]))
            del self._buffer[:self.part_size]
        return len(data)

    def flush(self):
        pass

    def _send(self, body):
        if self._upload_id is None:
            self._upload_id = call(f"start uploading s3://{self.bucket}/{self.key}",
                                   self.s3.create_multipart_upload, Bucket=self.bucket,
                                   Key=self.key, ServerSideEncryption="AES256",
                                   ChecksumAlgorithm=CHECKSUM)["UploadId"]
        number = len(self._parts) + 1
        self._slots.acquire()

        def upload():
            try:
                answer = call(f"upload part {number} of s3://{self.bucket}/{self.key}",
                              self.s3.upload_part, Bucket=self.bucket, Key=self.key,
                              UploadId=self._upload_id, PartNumber=number, Body=body,
                              ChecksumAlgorithm=CHECKSUM)
                return {"PartNumber": number, "ETag": answer["ETag"],
                        "ChecksumSHA256": answer["ChecksumSHA256"]}
            finally:
                self._slots.release()

        self._parts.append(self._pool.submit(upload))

    def close(self):
        """Finish the object; returns its version id (None without versioning)."""
        try:
            if self._upload_id is None:
                # Smaller than one part: a single request.
                answer = call(f"upload s3://{self.bucket}/{self.key}", self.s3.put_object,
                              Bucket=self.bucket, Key=self.key, Body=bytes(self._buffer),
                              ServerSideEncryption="AES256", ChecksumAlgorithm=CHECKSUM)
                return answer.get("VersionId")
            if self._buffer:
                self._send(bytes(self._buffer))
                self._buffer.clear()
            parts = [f.result() for f in self._parts]
            answer = call(f"finish uploading s3://{self.bucket}/{self.key}",
                          self.s3.complete_multipart_upload, Bucket=self.bucket,
                          Key=self.key, UploadId=self._upload_id,
                          MultipartUpload={"Parts": parts})
            return answer.get("VersionId")
        except BaseException:
            self.abort()
            raise
        finally:
            self._pool.shutdown(wait=True)

    def abort(self):
        for future in self._parts:
            future.cancel()
        self._pool.shutdown(wait=True)
        if self._upload_id is not None:
            call(f"abort the upload of s3://{self.bucket}/{self.key}",
                 self.s3.abort_multipart_upload, missing=("NoSuchUpload",),
                 Bucket=self.bucket, Key=self.key, UploadId=self._upload_id)
            self._upload_id = None


class Download:
    """A readable stream of one S3 object version that checks it at the end against the
    manifest's SHA-256 and against the SHA-256 S3 holds for that version (whole, or the
    composite of the parts of a multipart upload): a mismatch, or a version S3 holds no
    SHA-256 for, raises BackupError naming the key, so a corrupted or substituted backup
    fails loudly."""

    def __init__(self, s3, bucket, key, expected_sha256, version_id=None):
        self.key = f"s3://{bucket}/{key}"
        extra = {"VersionId": version_id} if version_id else {}
        answer = call(f"download {self.key}", s3.get_object, Bucket=bucket, Key=key,
                      ChecksumMode="ENABLED", **extra)
        self.version_id = answer.get("VersionId")
        self.last_modified = answer.get("LastModified")
        self._body = answer["Body"]
        self._expected = expected_sha256
        self._held = answer.get("ChecksumSHA256")
        self._sha = hashlib.sha256()
        # A composite digest ("DIGEST-N") is over the parts' digests: the first part's
        # size (every part but the last has it) says where each part ends.
        self._part_size = None
        if self._held and "-" in self._held:
            first = call(f"read the parts of {self.key}", s3.head_object, Bucket=bucket,
                         Key=key, PartNumber=1, ChecksumMode="ENABLED",
                         **({"VersionId": self.version_id} if self.version_id else {}))
            self._part_size = first["ContentLength"]
        self._parts, self._part, self._in_part = [], hashlib.sha256(), 0
        self.size = 0
        self.finished = False

    def readable(self):
        return True

    def read(self, size=-1):
        data = self._body.read(PART_SIZE if size is None or size < 0 else size)
        self._sha.update(data)
        self._track_parts(data)
        self.size += len(data)
        if not data:
            self.verify()
        return data

    def _track_parts(self, data):
        view = memoryview(data)
        while self._part_size and view:
            piece = view[:self._part_size - self._in_part]
            self._part.update(piece)
            self._in_part += len(piece)
            view = view[len(piece):]
            if self._in_part == self._part_size:
                self._parts.append(self._part.digest())
                self._part, self._in_part = hashlib.sha256(), 0

    def s3_digest(self):
        """The bytes read, digested as S3 digests this object."""
        if self._part_size is None:
            return base64.b64encode(self._sha.digest()).decode()
        parts = self._parts + ([self._part.digest()] if self._in_part else [])
        combined = hashlib.sha256(b"".join(parts)).digest()
        return f"{base64.b64encode(combined).decode()}-{len(parts)}"

    def verify(self):
        if self.finished:
            return
        hint = ("Do not restore it: choose an older backup (aws_backup --list), or an older "
                "version of the object (aws_restore --object-version; the bucket keeps them).")
        actual = self._sha.hexdigest()
        if actual != self._expected:
            raise BackupError(
                f"Checksum mismatch for {self.key}: the manifest says SHA-256 "
                f"{self._expected}, the object has {actual}. This backup is damaged or was "
                "altered.", hint)
        if not self._held:
            raise BackupError(
                f"S3 holds no SHA-256 for {self.key}: it was not uploaded as helios-aws "
                "uploads backups, so only its own manifest vouches for it.",
                "Take a new backup (aws_backup) and use that one. " + hint)
        if self.s3_digest() != self._held:
            raise BackupError(
                f"Checksum mismatch for {self.key}: S3 holds SHA-256 {self._held}, the bytes "
                f"read give {self.s3_digest()}. This backup is damaged or was altered.", hint)
        self.finished = True

    def drain(self):
        while self.read(PART_SIZE):
            pass


def _pump(source, target):
    """Copy ``source`` to ``target`` in parts, keeping one part in memory."""
    while True:
        chunk = source.read(PART_SIZE)
        if not chunk:
            return
        target.write(chunk)


class _Stderr:
    """The last few KiB a child wrote to stderr, read in a thread (so a full pipe never
    stalls it)."""

    def __init__(self, stream):
        self.text = b""
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for line in stream:
            self.text = (self.text + line)[-ERROR_TAIL:]

    def result(self):
        self._thread.join()
        return self.text.decode(errors="replace").strip()


# ------------------------------------------------------------------------- backup


def _log(progress, text):
    if progress is not None:
        progress(text)


def _dump(db, snapshot, upload):
    args = ["--format=custom", "--no-owner", "--no-privileges"]
    if snapshot:
        args.append(f"--snapshot={snapshot}")
    child = subprocess.Popen(db.argv("pg_dump", *args), env=db.env(), cwd="/",
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    errors = _Stderr(child.stderr)
    try:
        _pump(child.stdout, upload)
    finally:
        child.stdout.close()
        status = child.wait()
    if status != 0:
        raise BackupError(f"pg_dump of database {db.name} failed (exit {status}): "
                          f"{errors.result()}", "See the message above.")


class _Snapshot:
    """A read-only transaction whose snapshot pg_dump shares (``--snapshot``), so the row
    counts in the manifest are those of the dump exactly."""

    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.child = subprocess.Popen(
            self.db.argv("psql", "-XAtq", "-v", "ON_ERROR_STOP=1"), env=self.db.env(),
            cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        self.id = self._ask("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n"
                            "SELECT pg_export_snapshot();")
        return self

    def _ask(self, sql):
        """Run ``sql`` in the transaction; the lines it printed."""
        end = "--helios-aws-end--"
        self.child.stdin.write(f"{sql}\nSELECT '{end}';\n")
        self.child.stdin.flush()
        lines = []
        while True:
            line = self.child.stdout.readline()
            if not line:
                raise BackupError(f"psql on database {self.db.name} stopped: "
                                  f"{self.child.stderr.read()[-ERROR_TAIL:].strip()}",
                                  "See the message above.")
            if line.strip() == end:
                return "\n".join(lines)
            lines.append(line.strip())

    def row_counts(self):
        return row_counts(lambda sql: self._ask(sql + ";"))

    def migrations(self):
        try:
            return self._ask(MIGRATIONS_SQL + ";")
        except BackupError:
            return ""

    def __exit__(self, *exc_info):
        try:
            self.child.stdin.write("COMMIT;\n")
            self.child.stdin.close()
        except OSError:
            pass
        self.child.wait()


def _archive_media(media_root, upload):
    """MEDIA_ROOT as a tar stream (names relative to it); returns the number of files."""
    root = Path(media_root).resolve() if media_root else None
    files = 0
    with tarfile.open(fileobj=upload, mode="w|") as tar:
        if root is not None and root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_symlink() or not (path.is_file() or path.is_dir()):
                    continue
                tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
                files += path.is_file()
    return files


def run_backup(config, db, media_root, kind="daily", release="", progress=None, when=None):
    """Back up ``db`` and ``media_root`` as a ``kind`` backup; returns the manifest.

    The manifest is written last: a backup without one is incomplete and never listed,
    drilled or restored.
    """
    if kind not in KINDS:
        raise BackupError(f"Unknown backup kind {kind!r}.", f"Use one of {', '.join(KINDS)}.")
    # Whatever this process writes meanwhile is its own alone; the caller's umask returns.
    umask = os.umask(0o077)
    try:
        return _run_backup(config, db, media_root, kind, release, progress, when)
    finally:
        os.umask(umask)


def _run_backup(config, db, media_root, kind, release, progress, when):
    s3 = config.s3()
    when = when or now()
    folder = config.folder(kind, when)
    _log(progress, f"backup {folder}: dumping database {db.name}...")
    with _Snapshot(db) as snapshot:
        counts = snapshot.row_counts()
        migrations = snapshot.migrations()
        dump = Upload(s3, config.bucket, folder + DUMP)
        try:
            _dump(db, snapshot.id, dump)
        except BaseException:
            dump.abort()
            raise
        dump_version = dump.close()
    _log(progress, f"backup {folder}{DUMP}: {dump.size} bytes, sha256 "
                   f"{dump.sha256.hexdigest()}")
    media = Upload(s3, config.bucket, folder + MEDIA)
    try:
        files = _archive_media(media_root, media)
    except BaseException:
        media.abort()
        raise
    media_version = media.close()
    _log(progress, f"backup {folder}{MEDIA}: {files} files, {media.size} bytes")
    manifest = {
        "version": MANIFEST_VERSION,
        "deployment": config.prefix,
        "kind": kind,
        "folder": folder,
        "created_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "release": release,
        "migrations": migrations,
        "database": {"name": db.name, "key": folder + DUMP, "size": dump.size,
                     "sha256": dump.sha256.hexdigest(), "version_id": dump_version},
        "media": {"key": folder + MEDIA, "size": media.size, "files": files,
                  "sha256": media.sha256.hexdigest(), "version_id": media_version},
        "row_counts": counts,
    }
    call(f"upload s3://{config.bucket}/{folder}{MANIFEST}", s3.put_object,
         Bucket=config.bucket, Key=folder + MANIFEST, ServerSideEncryption="AES256",
         ChecksumAlgorithm=CHECKSUM,
         Body=json.dumps(manifest, indent=2, sort_keys=True).encode(),
         ContentType="application/json")
    _log(progress, f"backup {folder}: complete ({sum(counts.values())} rows in "
                   f"{len(counts)} tables)")
    return manifest


# ------------------------------------------------------------------------- reading


def list_backups(config, s3=None):
    """Every complete backup (one with a manifest), newest first:
    [{"folder", "kind", "created_at" (datetime, as its name states), "uploaded_at" (when
    S3 stored its manifest: S3's own time, which the server cannot state), "size"}]."""
    s3 = s3 or config.s3()
    found = {}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=config.bucket,
                                                         Prefix=config.prefix + "/")
    with translate(f"list the backups in s3://{config.bucket}/{config.prefix}/"):
        for page in pages:
            for item in page.get("Contents", []):
                parts = item["Key"].split("/")
                if len(parts) != 4 or parts[1] not in KINDS:
                    continue
                folder = "/".join(parts[:3]) + "/"
                entry = found.setdefault(folder, {"folder": folder, "kind": parts[1],
                                                  "size": 0, "complete": False,
                                                  "valid": True})
                entry["size"] += item["Size"]
                if parts[3] == MANIFEST:
                    entry["complete"] = True
                    entry["uploaded_at"] = item["LastModified"]
                try:
                    entry["created_at"] = parse_stamp(parts[2])
                except ValueError:
                    entry["valid"] = False
    backups = [b for b in found.values() if b["complete"] and b["valid"]]
    return sorted(backups, key=lambda b: b["uploaded_at"], reverse=True)


def list_drills(config, s3=None):
    """Every recorded drill, newest first (the JSON records)."""
    s3 = s3 or config.s3()
    drills = []
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=config.bucket, Prefix=f"{config.prefix}/{DRILLS}/")
    with translate(f"list the drills in s3://{config.bucket}/{config.prefix}/{DRILLS}/"):
        keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    for key in sorted(keys, reverse=True):
        drills.append(records.check(
            read_json(s3, config.bucket, key), records.DRILL, f"s3://{config.bucket}/{key}",
            "A damaged drill record: delete it (aws_restore --drill records a new one).",
            BackupError))
    return drills


def read_json(s3, bucket, key, version_id=None):
    extra = {"VersionId": version_id} if version_id else {}
    body = call(f"download s3://{bucket}/{key}", s3.get_object, Bucket=bucket, Key=key,
                **extra)["Body"]
    try:
        return json.loads(body.read())
    except ValueError:
        raise BackupError(f"s3://{bucket}/{key} is not valid JSON.",
                          "The backup is damaged: choose another one.")


def read_manifest(config, folder, s3=None, version_id=None):
    """The backup's manifest: its current version, or the version ``version_id`` names
    (an earlier one, when the manifest was written over)."""
    return records.check(read_json(s3 or config.s3(), config.bucket, folder + MANIFEST,
                                   version_id),
                         records.MANIFEST, f"s3://{config.bucket}/{folder}{MANIFEST}",
                         "The backup's manifest is damaged: choose another backup.",
                         BackupError)


def choose(config, backup=None, s3=None):
    """The folder of ``backup`` (see :meth:`Config.normalise`), else of the newest one."""
    if backup:
        return config.normalise(backup)
    backups = list_backups(config, s3)
    if not backups:
        raise BackupError(f"There is no backup in s3://{config.bucket}/{config.prefix}/.",
                          "Run aws_backup first.")
    return backups[0]["folder"]


# ------------------------------------------------------------------------- restore


# What a restore into production replaces: everything of Helios's, including tables a
# newer release added since the backup (``pg_restore --clean`` would leave those).
REPLACE_SQL = "DROP SCHEMA IF EXISTS public CASCADE;\nCREATE SCHEMA public;\n"


def _restore(db, download, replace=False):
    """Restore ``download`` into ``db`` in one transaction, all or nothing.

    ``pg_restore`` turns the archive into SQL on the fly and ``psql --single-transaction``
    applies it (after :data:`REPLACE_SQL` when ``replace``). psql's input is closed,
    which commits, only once the whole download matched its checksum; otherwise psql is
    killed and the database is left as it was.
    """
    convert = subprocess.Popen(
        db.argv("pg_restore", "--no-owner", "--no-privileges", "--file=-"), env=db.env(),
        cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    apply = subprocess.Popen(
        db.argv("psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", "-"),
        env=db.env(), cwd="/", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    convert_errors, apply_errors = _Stderr(convert.stderr), _Stderr(apply.stderr)
    verified = threading.Event()
    outcome = {}

    def feed():
        # Read pg_restore's output to its end even when psql has stopped (an error), so
        # that pg_restore, and the download feeding it, never block on a full pipe.
        target = apply.stdin
        chunks = itertools.chain([REPLACE_SQL.encode()] if replace else [],
                                 iter(lambda: convert.stdout.read(PART_SIZE), b""))
        for chunk in chunks:
            if target is None:
                continue
            try:
                target.write(chunk)
            except BrokenPipeError:
                target = None
        verified.wait()
        if outcome.get("ok"):
            try:
                apply.stdin.close()
            except BrokenPipeError:
                pass
        else:
            apply.kill()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    mismatch = None
    try:
        try:
            _pump(download, convert.stdin)
        except BrokenPipeError:
            pass
        finally:
            try:
                convert.stdin.close()
            except BrokenPipeError:
                pass
        if not download.finished:
            download.drain()
    except BackupError as exc:
        mismatch = exc
    finally:
        converted = convert.wait()
        outcome["ok"] = mismatch is None and converted == 0
        verified.set()
        feeder.join()
        applied = apply.wait()
    if mismatch is not None:
        raise mismatch
    if converted != 0:
        raise BackupError(f"pg_restore could not read the backup (exit {converted}): "
                          f"{convert_errors.result()}", "Choose another backup.")
    if applied != 0:
        raise BackupError(f"Restoring into database {db.name} failed (exit {applied}); "
                          f"nothing was changed: {apply_errors.result()}",
                          "See the message above.")


def _verify(s3, config, part):
    """Read the object's version the manifest names (the one first written, which the
    bucket keeps if the object is overwritten; the current one for a manifest that names
    none) once to check it; returns that version's id."""
    download = Download(s3, config.bucket, part["key"], part["sha256"],
                        part.get("version_id"))
    download.drain()
    return download.version_id


def drill(config, db, admin, backup=None, progress=None, object_version=None):
    """Restore a backup into a scratch database next to ``db`` and compare it with its
    manifest; the scratch database is always dropped. The result (passed or not) is
    recorded under ``NAME/drills/``; returns it. ``admin`` reaches the server as a role
    that may create databases."""
    s3 = config.s3()
    started = now()
    folder = choose(config, backup, s3)
    record = {"backup": folder, "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
              "passed": False}
    scratch = db.other(f"helios_drill_{stamp(started).lower().replace('-', '')}")
    try:
        manifest = read_manifest(config, folder, s3, object_version)
        record["created_at"] = manifest["created_at"]
        _log(progress, f"drill {folder}: checking {MEDIA}...")
        _verify(s3, config, manifest["media"])
        _log(progress, f"drill {folder}: restoring {DUMP} into scratch database "
                       f"{scratch.name}...")
        admin.query(f'CREATE DATABASE "{scratch.name}" OWNER "{db.user or db.run_as}"'
                    if (db.user or db.run_as) else f'CREATE DATABASE "{scratch.name}"')
        try:
            part = manifest["database"]
            _restore(scratch, Download(s3, config.bucket, part["key"], part["sha256"],
                                       part.get("version_id")))
            counts = scratch.row_counts()
        finally:
            # FORCE: a restore cut short (a damaged backup) may leave its server session
            # a moment longer than the killed client (PostgreSQL 13 and newer).
            admin.query(f'DROP DATABASE IF EXISTS "{scratch.name}" WITH (FORCE)')
            _log(progress, f"drill {folder}: dropped scratch database {scratch.name}")
        expected = manifest["row_counts"]
        differ = sorted(t for t in set(expected) | set(counts)
                        if expected.get(t) != counts.get(t))
        if differ:
            raise BackupError(
                f"Drill of {folder}: row counts differ from the manifest in "
                + ", ".join(f"{t} ({expected.get(t)} expected, {counts.get(t)} restored)"
                            for t in differ) + ".",
                "The backup does not restore what was dumped: choose another one.")
        record.update(passed=True, rows=sum(counts.values()), tables=len(counts))
    except HeliosAWSError as exc:
        record["error"] = exc.message
        raise
    finally:
        finished = now()
        record["finished_at"] = finished.strftime("%Y-%m-%dT%H:%M:%SZ")
        record["seconds"] = round((finished - started).total_seconds(), 1)
        call("record the drill", s3.put_object, Bucket=config.bucket,
             Key=f"{config.prefix}/{DRILLS}/{stamp(finished)}.json",
             Body=json.dumps(record, indent=2, sort_keys=True).encode(),
             ServerSideEncryption="AES256", ContentType="application/json",
             ChecksumAlgorithm=CHECKSUM)
    _log(progress, f"drill {folder}: passed ({record['rows']} rows in {record['tables']} "
                   "tables match the manifest, checksums verified against the manifest "
                   f"and S3, {record['seconds']}s)")
    return record
