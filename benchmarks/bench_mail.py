"""Mailing an election's voters through the real worker and broker, under SES's rate.

A Helios-like election of N voters (the fixture's models, in a real PostgreSQL) is mailed
as Helios mails it: one task queues one Celery task per voter, through RabbitMQ, to a
worker running as Helios runs it (``--concurrency 1``), with the deployment's overlay and
``EMAIL_USE_AWS=1``, so through helios-aws's mail backend. Meanwhile a second process,
standing for the web processes, sends its own mail (a tenth as many messages) through
the same backend. SES is moto in a server process behind the throttling stand-in
(helios_aws.rehearse.throttle), which answers SES's Throttling error over HTTP above
``--rate`` messages a second.

Goals: every voter's message is sent exactly once (none lost, no duplicate on a retry),
no failure is recorded in the mail ledger, and the whole takes at most 1.2 times the
messages divided by the rate.

    .venv/bin/python benchmarks/bench_mail.py [--voters 1000 | --large] [--rate 10]
"""

import argparse
import collections
import email
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import boto3  # noqa: E402

import rig  # noqa: E402  (PostgreSQL, RabbitMQ)
from fixtures import helios_env, make_fixture_project, run_manage  # noqa: E402

from helios_aws.rehearse.aws import moto_data  # noqa: E402
from helios_aws.rehearse.processes import LOOPBACK, Process, free_port  # noqa: E402
from helios_aws.rehearse.throttle import Throttle  # noqa: E402

GOAL = 1.2
SETTINGS = "--settings=helios_aws.settings_overrides.production"
SENDER = "elections@example.org"
CREATE = """
import os
from helios.models import Election, Voter
election = Election.objects.create(short_name="bench", name="Bench", frozen_at=Election.utcnow())
Voter.objects.bulk_create([Voter(election=election, uuid="v%d" % i,
                                 voter_email="voter%d@example.net" % i)
                           for i in range(int(os.environ["VOTERS"]))], batch_size=2000)
print(election.id)
"""
QUEUE = """
import os, time
from helios.tasks import voters_email
print(time.time())
voters_email.delay(int(os.environ["ELECTION"]), "Your ballot", "Vote at %(url)s")
"""
WEB = """
import os
from django.core.mail import send_mail
for i in range(int(os.environ["WEB"])):
    send_mail("Trustee notice", "Hello.", None, ["web%d@example.net" % i])
print("web done")
"""
LEDGER = """
from helios_aws.models import MailEvent
print(MailEvent.objects.count())
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voters", type=int, default=1000)
    parser.add_argument("--large", action="store_true", help="10,000 voters")
    parser.add_argument("--rate", type=float, default=10.0,
                        help="the stand-in's MaxSendRate, messages a second")
    parser.add_argument("--burst", type=float, default=None,
                        help="messages the stand-in lets through at once (default: one "
                             "second's worth); 1 refuses any message that comes early")
    args = parser.parse_args()
    voters = 10_000 if args.large else args.voters
    web = voters // 10
    base = Path(tempfile.mkdtemp(prefix="bench-mail-"))
    processes = []
    try:
        port = free_port()
        moto = Process([Path(sys.executable).parent / "moto_server", "-H", LOOPBACK, "-p",
                        str(port)], base / "moto.log")
        processes.append(moto)
        moto.wait_for_port(LOOPBACK, port)
        moto_url = f"http://{LOOPBACK}:{port}"
        os.environ.update(AWS_ENDPOINT_URL=moto_url, AWS_ACCESS_KEY_ID="testing",
                          AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
        ses = boto3.client("ses")
        ses.verify_domain_identity(Domain="example.org")
        ses.verify_email_identity(EmailAddress=SENDER)
        throttle = Throttle(moto_url, args.rate, args.burst).start()

        postgres = rig.Postgres()
        processes.append(postgres)
        broker = rig.RabbitMQ(base / "rabbitmq")
        processes.append(broker)
        project = make_fixture_project(base, "requirements")
        # Over the socket: Helios requires SSL on any DATABASE_URL, which libpq ignores there.
        socket_dir = str(postgres.socket_dir).replace("/", "%2F")
        database = f"postgres://postgres@{socket_dir}:{postgres.port}/{postgres.database}"
        env = helios_env(DATABASE_URL=database, EMAIL_USE_AWS="1",
                         DEFAULT_FROM_EMAIL=SENDER, AWS_ENDPOINT_URL=throttle.url,
                         AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                         AWS_SES_REGION_NAME="us-east-1", CELERY_BROKER_URL=broker.url,
                         HELIOS_AWS_MAIL_PACE_FILE=str(base / "mail-pace"),
                         DJANGO_SETTINGS_MODULE="helios_aws.settings_overrides.production")
        for script, extra in (("migrate", None), (CREATE, {"VOTERS": str(voters)})):
            args_ = ["migrate", "--no-input"] if script == "migrate" else ["shell", "-c", script]
            done = run_manage(project, *args_, SETTINGS, env=dict(env, **(extra or {})),
                              timeout=600)
            if done.returncode != 0:
                sys.exit(done.stderr)
        election = done.stdout.strip().splitlines()[-1]

        worker = Process([sys.executable, "-m", "celery", "--app", "helios", "worker",
                          "--concurrency", "1", "--loglevel", "WARNING"], base / "worker.log",
                         env=env, cwd=project)
        processes.append(worker)
        log = base / "worker.log"
        worker.wait_until(lambda: "ready" in log.read_text() or
                          "celery@" in log.read_text(), "the worker to start", timeout=120)
        time.sleep(2)

        # The clock starts when the election's mail is queued (as an administrator's
        # click does), not when the process that queues it has started Django.
        queued = run_manage(project, "shell", SETTINGS, "-c", QUEUE,
                            env=dict(env, ELECTION=election), timeout=120)
        if queued.returncode != 0:
            sys.exit(queued.stderr)
        started = float(queued.stdout.strip().splitlines()[-1])
        web_process = subprocess.Popen(
            [sys.executable, "manage.py", "shell", SETTINGS, "-c", WEB], cwd=project,
            env=dict(env, WEB=str(web)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, stdin=subprocess.DEVNULL)
        total = voters + web
        deadline = started + 3 * total / args.rate + 120
        while throttle.sent < total and time.time() < deadline:
            time.sleep(0.05)
        elapsed = time.time() - started
        web_out, web_err = web_process.communicate(timeout=120)

        messages = moto_data(moto_url)["ses"]["RawMessage"]
        counts = collections.Counter(
            to for m in messages
            for to in email.message_from_string(m["raw_data"]).get_all("To", []))
        voter_counts = [counts.get(f"voter{i}@example.net", 0) for i in range(voters)]
        web_counts = [counts.get(f"web{i}@example.net", 0) for i in range(web)]
        ledger = run_manage(project, "shell", SETTINGS, "-c", LEDGER, env=env, timeout=120)
        failures = ledger.stdout.strip().splitlines()[-1] if ledger.returncode == 0 else "?"

        lost = sum(1 for c in voter_counts + web_counts if c == 0)
        doubled = sum(1 for c in voter_counts + web_counts if c > 1)
        floor = total / args.rate
        print(f"{voters} voters through the worker and {web} messages from a second "
              f"process at {args.rate:g}/s: {elapsed:.1f} s (N/rate {floor:.1f} s, "
              f"ratio {elapsed / floor:.2f}); SES took {throttle.sent}, throttled "
              f"{throttle.refused} (retried); lost {lost}, sent twice {doubled}, ledger "
              f"failures {failures}")
        if "web done" not in web_out:
            print(web_err[-2000:])
        ok = lost == 0 and doubled == 0 and failures == "0" and elapsed <= GOAL * floor
        print(f"goal (exactly once, none lost, <= {GOAL}x N/rate): "
              f"{'met' if ok else 'NOT met'}")
        return 0 if ok else 1
    finally:
        throttle_obj = locals().get("throttle")
        if throttle_obj is not None:
            throttle_obj.stop()
        for process in reversed(processes):
            process.stop()


if __name__ == "__main__":
    sys.exit(main())
