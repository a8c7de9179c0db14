"""How much a no-op ``aws_provision`` costs: AWS API calls and wall time, against moto.

Starts moto in server mode on loopback, provisions a deployment once (the first run),
then runs it again with nothing to change and counts every API call of that second run
with botocore's ``before-parameter-build`` event, and fails when it is over the goal or
when any request is repeated with the same parameters (a read made twice).

The goal: at most 18 calls for today's resources (12 before the backup bucket, plus one
read per bucket setting that drift detection needs), plus one per new resource kind.
A feature that adds a kind of resource (Object Lock, a topic, alarms, a health check, a
configuration set...) adds its line to NEW_KINDS below, and so raises the goal by one.

    .venv/bin/python benchmarks/bench_provision_noop.py [--runs N]

Runs the library in-process (as ``manage.py aws_provision --skip-host`` does, without
Django's start-up time), with the test suite's stand-in for the console output, in which
cloud-init printed the host key.
"""

import argparse
import collections
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TODAY = 18
# One call each, for the kinds of resources added after the goal was set (see above).
NEW_KINDS = (
    "the backup bucket's Object Lock (s3.GetObjectLockConfiguration)",
    "the alerts topic (sns.ListSubscriptionsByTopic)",
    "the alarms (cloudwatch.DescribeAlarms)",
    "the site's health check (route53.ListHealthChecks)",
    "the SES account's bounce and complaint rates (cloudwatch.GetMetricData)",
)
GOAL = TODAY + len(NEW_KINDS)
DOMAIN, ZONE, EMAIL = "vote.example.org", "example.org", "elections@example.org"


def start_moto(workdir):
    import moto.ec2.responses.general as moto_console
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    key = workdir / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    fingerprint = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], check=True,
                                 capture_output=True, text=True).stdout.split()[1]
    prefix = "<14>Nov 25 12:40:05 cloud-init:"
    moto_console.SAMPLE_CONSOLE_OUTPUT = "\r\n".join([
        f"{prefix} -----BEGIN SSH HOST KEY FINGERPRINTS-----",
        f"{prefix} 256 {fingerprint} root@ip-172-31-22-10.ec2.internal (ED25519)",
        f"{prefix} -----END SSH HOST KEY FINGERPRINTS-----",
    ]) + "\r\n"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # The default OS's (Debian 13's) image parameters, which moto does not ship.
    from helios_aws.rehearse.aws import publish_debian_images

    publish_debian_images(f"http://{host}:{port}")
    os.environ.update({
        "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(workdir / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "none"),
    })
    for name in ("AWS_PROFILE", "AWS_CA_BUNDLE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    return server


def measured_run(deployment, out_dir):
    """One provisioning run; returns (seconds, Counter of service.Operation, summary,
    Counter of (service.Operation, parameters))."""
    from helios_aws import provision
    from helios_aws.engine import Output, summary

    calls = collections.Counter()
    requests = collections.Counter()
    out = Output(lambda text: None)
    started = time.perf_counter()
    ctx = provision.make_context(deployment, out_dir, {"skip_host": True}, out)

    def count(model, params, **kwargs):
        operation = f"{model.service_model.service_name}.{model.name}"
        calls.update([operation])
        requests.update([(operation, json.dumps(params, sort_keys=True, default=str))])

    ctx.aws.session.events.register("before-parameter-build", count)
    results = provision.provision(ctx, out)
    return time.perf_counter() - started, calls, summary(results), requests


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="no-op runs to time (default 5)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

    import boto3

    from helios_aws import params

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = start_moto(workdir)
        try:
            boto3.client("route53").create_hosted_zone(Name=ZONE, CallerReference="bench")
            deployment = params.build([{"domain": DOMAIN, "email": EMAIL,
                                        "ssh_cidr": "203.0.113.7/32"}])
            out_dir = workdir / "deploy"
            params.write_record(out_dir, deployment)

            first_time, first_calls, first_summary, _ = measured_run(deployment, out_dir)
            noop = [measured_run(deployment, out_dir) for _ in range(args.runs)]
        finally:
            server.stop()

    times = [t for t, _, _, _ in noop]
    calls = noop[-1][1]
    rows = [
        ("first run", sum(first_calls.values()), f"{first_time:.2f} s", first_summary),
        (f"no-op run (median of {args.runs})", sum(calls.values()),
         f"{statistics.median(times):.2f} s", noop[-1][2]),
    ]
    print(f"{'run':<26} {'API calls':>9} {'wall time':>10}  outcome")
    for name, count, wall, outcome in rows:
        print(f"{name:<26} {count:>9} {wall:>10}  {outcome}")
    print()
    print("API calls of the no-op run:")
    for operation, count in sorted(calls.items()):
        print(f"  {operation:<46} {count}")
    total = sum(calls.values())
    repeated = [(operation, params, n) for (operation, params), n in noop[-1][3].items()
                if n > 1]
    for operation, params, n in repeated:
        print(f"REPEATED: {operation} {n} times with the same parameters {params}")
    verdict = "within" if total <= GOAL else "OVER"
    print(f"\n{total} calls: {verdict} the goal of at most {GOAL} ({TODAY} for today's "
          f"resources + {len(NEW_KINDS)} new kinds); {len(repeated)} request(s) repeated.")
    ok = total <= GOAL and not repeated and all(s == "no changes" for _, _, s, _ in noop)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
