"""aws_check's whole report against its slowest probe run alone, on loopback.

The goal: probes run concurrently, so the whole report should take no more than 1.3 times
its slowest part. The site is real (nginx with the rendered site file, gunicorn serving the
Helios-like fixture, PostgreSQL, a local CA's certificate), AWS is moto in a server process
with the deployment's resources tagged, and the configuration area runs Django's system
checks in-process. The host area is skipped (no SSH host): its probes need the VM.

Both measurements go through the same library call (``helios_aws.probes.check``), so the
fixed costs of a run (reading the deployment, the project's URLconf) are in both.

    .venv/bin/python benchmarks/bench_check.py [--rounds 7]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import rig  # noqa: E402  (PostgreSQL)
from test_aws_check_aws import provision  # noqa: E402
from test_aws_check_site import Site  # noqa: E402

from helios_aws.rehearse.processes import LOOPBACK, Process, free_port  # noqa: E402
from helios_aws.rehearse.tls import LocalCA  # noqa: E402

GOAL = 1.3


def start_moto(directory):
    port = free_port()
    process = Process([Path(sys.executable).parent / "moto_server", "-H", LOOPBACK,
                       "-p", str(port)], directory / "moto.log")
    process.wait_for_port(LOOPBACK, port)
    return process, f"http://{LOOPBACK}:{port}"


def use_aws(endpoint):
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE"):
        os.environ.pop(name, None)
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true")


def use_django(site):
    """Load the fixture's settings in this process, from the deployment's .env."""
    sys.path.insert(0, str(site.project))
    os.chdir(site.project)
    os.environ["HELIOS_ENV_FILE"] = str(site.env_file)
    os.environ["DJANGO_SETTINGS_MODULE"] = "helios_aws.settings_overrides.production"
    import django

    django.setup()


def timed(check, options, rounds):
    """Median wall time of ``rounds`` runs, and the last report."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        report = check(options)
        times.append(time.perf_counter() - started)
    return statistics.median(times), report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds

    base = Path(tempfile.mkdtemp(prefix="bench-check-"))
    postgres = rig.Postgres()
    moto, endpoint = start_moto(base)
    site = None
    try:
        site = Site(base, postgres, LocalCA(base / "ca"))
        use_aws(endpoint)
        provision()
        use_django(site)
        from helios_aws import probes

        def options(only=()):
            return probes.Options(out_dir=site.deploy, address=LOOPBACK,
                                  ca_file=str(site.ca.ca_file), only=only)

        timed(probes.check, options(), 2)  # warm up: imports, connections, caches
        whole, report = timed(probes.check, options(), rounds)
        ran = [r for r in report.results if r.status != "skip"]
        units = sorted({"config" if r.area == "config" else r.id for r in ran})
        alone = {unit: timed(probes.check, options((unit,)), rounds)[0] for unit in units}
        slowest = max(alone, key=alone.get)
        fixed, _ = timed(probes.check, options(("site.E001",)), rounds)  # skipped: no EIP

        print(f"aws_check on loopback, median of {rounds} runs")
        print(f"  checks in the report: {len(report.results)} "
              f"({len(ran)} ran, {len(report.results) - len(ran)} skipped: "
              f"{', '.join(sorted({r.area for r in report.results if r.status == 'skip'}))})")
        print(f"  verdict: {report.verdict}")
        print(f"  fixed cost of a run (one skipped probe): {fixed * 1000:7.1f} ms")
        for unit in sorted(alone, key=alone.get, reverse=True)[:6]:
            print(f"  alone: {unit:<12} {alone[unit] * 1000:7.1f} ms")
        print(f"  sum of the parts run alone: {sum(alone.values()) * 1000:7.1f} ms")
        print(f"  whole report: {whole * 1000:7.1f} ms")
        ratio = whole / alone[slowest]
        print(f"  whole / slowest alone ({slowest}): {ratio:.2f} "
              f"(goal <= {GOAL}: {'met' if ratio <= GOAL else 'NOT met'})")
        return 0 if ratio <= GOAL else 1
    finally:
        if site is not None:
            site.stop()
        moto.stop()
        postgres.stop()


if __name__ == "__main__":
    sys.exit(main())
