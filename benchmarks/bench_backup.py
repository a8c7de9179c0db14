"""A backup to S3 against plain ``pg_dump`` to a local file, and its peak memory.

A private PostgreSQL is filled with generated Helios-like rows (voters and cast votes
with hex-encoded ballots, which compress about as badly as real ones) up to a tenth of
``--size-gb`` first, then up to ``--size-gb``. At both sizes the backup
(``helios_aws.backup.run_backup``: pg_dump piped into an S3 multipart upload, SHA-256 on
the way, plus the manifest) runs in a child process against a moto server, and that
child reports its own peak RSS. At the full size, ``pg_dump --format=custom -f FILE``
alone is timed too, and so is a restore drill of the full-size backup (for information).

Goals: the backup takes at most 1.3 times as long as pg_dump alone, and its peak memory
does not grow with the database (at the full size at most 10% + 8 MiB over the tenth).

    .venv/bin/python benchmarks/bench_backup.py [--size-gb 1]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import rig  # noqa: E402
from bench_check import start_moto, use_aws  # noqa: E402

TIME_GOAL = 1.3
MEMORY_SLACK = 1.1
MEMORY_SLACK_MIB = 8
BUCKET = "bench-backups"
BATCH_ROWS = 50_000
SCHEMA = """
CREATE TABLE helios_election (id serial PRIMARY KEY, short_name text, name text);
CREATE TABLE helios_voter (id serial PRIMARY KEY, election_id int REFERENCES helios_election,
                           voter_login_id text, voter_email text);
CREATE TABLE helios_castvote (id serial PRIMARY KEY, voter_id int REFERENCES helios_voter,
                              vote text, vote_hash text, cast_at timestamp);
CREATE TABLE django_migrations (id serial PRIMARY KEY, app text, name text, applied timestamp);
INSERT INTO django_migrations (app, name, applied) VALUES ('helios', '0001_initial', now());
INSERT INTO helios_election (short_name, name) VALUES ('bench', 'Benchmark election');
"""
# One voter and one ballot a row: about 1.1 KB on disk together.
GROW = f"""
WITH v AS (
  INSERT INTO helios_voter (election_id, voter_login_id, voter_email)
  SELECT 1, 'v' || i, 'v' || i || '@example.org' FROM generate_series(1, {BATCH_ROWS}) i
  RETURNING id)
INSERT INTO helios_castvote (voter_id, vote, vote_hash, cast_at)
SELECT v.id, (SELECT string_agg(md5(random()::text || v.id || n), '')
              FROM generate_series(1, 24) n), md5(v.id::text), now() FROM v
"""


def psql(postgres, sql):
    result = subprocess.run([rig.PG_BIN / "psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d",
                             postgres.database, "-c", sql], env=dict(os.environ, **postgres.env),
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"psql failed: {result.stderr}")
    return result.stdout.strip()


def size(postgres):
    return int(psql(postgres, f"SELECT pg_database_size('{postgres.database}')"))


def grow(postgres, target):
    while size(postgres) < target:
        psql(postgres, GROW)


def child(args):
    """Run one backup (or, with --drill, a drill of the newest) in this process; print its
    time and this process's peak RSS."""
    from helios_aws import backup

    config = backup.Config(bucket=BUCKET, prefix="bench", region="us-east-1")
    db = backup.Database(args.database, host=args.pghost, port=args.pgport, user="postgres")
    started = time.monotonic()
    if args.drill:
        backup.drill(config, db, db.other("postgres"))
        size = None
    else:
        size = backup.run_backup(config, db, media_root="")["database"]["size"]
    print(json.dumps({"seconds": time.monotonic() - started,
                      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "dump_bytes": size}))


def in_child(postgres, *extra):
    result = subprocess.run(
        [sys.executable, __file__, "--child", "--database", postgres.database,
         "--pghost", str(postgres.socket_dir), "--pgport", str(postgres.port), *extra],
        capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"the {'drill' if extra else 'backup'} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def pg_dump_once(postgres, directory):
    target = Path(directory) / "plain.dump"
    started = time.monotonic()
    subprocess.run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges",
                    "-f", target, postgres.database], env=dict(os.environ, **postgres.env),
                   check=True)
    seconds = time.monotonic() - started
    target.unlink()
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0,
                        help="Size of the generated database in GB (default 1).")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--pghost", help=argparse.SUPPRESS)
    parser.add_argument("--pgport", help=argparse.SUPPRESS)
    parser.add_argument("--drill", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory(prefix="bench-backup-") as directory:
        directory = Path(directory)
        moto, endpoint = start_moto(directory)
        postgres = rig.Postgres()
        try:
            use_aws(endpoint)
            import boto3

            boto3.client("s3").create_bucket(Bucket=BUCKET)
            psql(postgres, SCHEMA)
            full = int(args.size_gb * 1e9)
            grow(postgres, full // 10)
            small_size = size(postgres)
            small = in_child(postgres)
            grow(postgres, full)
            full_size = size(postgres)
            plain = pg_dump_once(postgres, directory)
            large = in_child(postgres)
            drill = in_child(postgres, "--drill")
        finally:
            postgres.stop()
            moto.stop()

    ratio = large["seconds"] / plain
    memory_ok = large["peak_mib"] <= small["peak_mib"] * MEMORY_SLACK + MEMORY_SLACK_MIB
    print(f"database {small_size / 1e9:.2f} GB: backup {small['seconds']:.1f}s, "
          f"peak RSS {small['peak_mib']:.0f} MiB")
    print(f"database {full_size / 1e9:.2f} GB (dump {large['dump_bytes'] / 1e6:.0f} MB): "
          f"pg_dump to a file {plain:.1f}s, backup to S3 {large['seconds']:.1f}s "
          f"({ratio:.2f}x), peak RSS {large['peak_mib']:.0f} MiB")
    print(f"restore drill of that backup (download, verify, restore, count, drop): "
          f"{drill['seconds']:.1f}s, peak RSS {drill['peak_mib']:.0f} MiB")
    print(f"time {ratio:.2f}x pg_dump (goal <= {TIME_GOAL}x); peak memory "
          f"{small['peak_mib']:.0f} -> {large['peak_mib']:.0f} MiB "
          f"({'flat' if memory_ok else 'GROWS'})")
    return 0 if ratio <= TIME_GOAL and memory_ok else 1


if __name__ == "__main__":
    sys.exit(main())
