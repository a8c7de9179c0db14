"""helios-aws's mail backend as Helios uses it: ``send_mail`` in Helios's settings with the
overlay and ``EMAIL_USE_AWS=1``, in separate Django processes, through the throttling
stand-in (helios_aws.rehearse.throttle) in front of the moto server, over HTTP; failures
land in the mail ledger in a real PostgreSQL.
"""

import email
import json
import os
import subprocess
import sys
import time

import boto3
import pytest

import rig
from fixtures import helios_env, make_fixture_project, run_manage
from helios_aws.rehearse.throttle import Throttle

SETTINGS = "--settings=helios_aws.settings_overrides.production"
SENDER = "elections@example.org"
UUID = "0b7f3c1e-9a1d-4c55-8e0e-2f9d6a1b3c4d"
SEND = """
import os, sys
from django.core.mail import send_mail
first, count = int(os.environ["FIRST"]), int(os.environ["COUNT"])
failed = 0
for i in range(first, first + count):
    try:
        send_mail("Your ballot", "Vote at https://vote.example.org/helios/elections/%s/vote"
                  % os.environ["UUID"], None, ["voter%d@example.net" % i])
    except Exception as exc:
        failed += 1
        print("FAILED", type(exc).__name__, exc)
print("done", failed)
"""
LEDGER = """
import json
from helios_aws.models import MailEvent
print(json.dumps([[e.address, e.election_uuid, e.kind, e.reason]
                  for e in MailEvent.objects.order_by("address")]))
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory, postgres):
    project = make_fixture_project(tmp_path_factory.mktemp("mailer"), "requirements")
    rig.run([rig.PG_BIN / "createdb", "helios_mailer"], env=dict(os.environ, **postgres.env))
    socket_dir = str(postgres.socket_dir).replace("/", "%2F")
    url = f"postgres://postgres@{socket_dir}:{postgres.port}/helios_mailer"
    migrated = run_manage(project, "migrate", SETTINGS, "--no-input",
                          env=helios_env(DATABASE_URL=url), timeout=300)
    assert migrated.returncode == 0, migrated.stderr
    return project, url


@pytest.fixture
def throttle(aws_env):
    ses = boto3.client("ses")
    ses.verify_domain_identity(Domain="example.org")
    ses.verify_email_identity(EmailAddress=SENDER)
    stand_in = None

    def start(rate, burst=None):
        nonlocal stand_in
        stand_in = Throttle(aws_env, rate, burst).start()
        return stand_in

    yield start
    if stand_in:
        stand_in.stop()


def sender(project, throttle, tmp_path, first, count, **extra):
    project, url = project
    env = helios_env(DATABASE_URL=url, EMAIL_USE_AWS="1", DEFAULT_FROM_EMAIL=SENDER,
                     AWS_ENDPOINT_URL=throttle.url, AWS_SES_REGION_NAME="us-east-1",
                     HELIOS_AWS_MAIL_BACKOFF="0.05", FIRST=str(first), COUNT=str(count),
                     UUID=UUID, **{"HELIOS_AWS_MAIL_PACE_FILE": str(tmp_path / "pace"),
                                   **extra})
    return subprocess.Popen([sys.executable, "manage.py", "shell", SETTINGS, "-c", SEND],
                            cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def delivered(moto_url):
    """Recipient -> how many times moto took a message for them."""
    counts = {}
    for message in rig.moto_data(moto_url)["ses"]["RawMessage"]:
        for to in email.message_from_string(message["raw_data"]).get_all("To", []):
            counts[to] = counts.get(to, 0) + 1
    return counts


def ledger(project):
    project, url = project
    result = run_manage(project, "shell", SETTINGS, "-c", LEDGER,
                        env=helios_env(DATABASE_URL=url), timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_two_processes_share_the_rate_and_every_voter_gets_one_message(
        project, throttle, tmp_path, aws_env):
    stand_in = throttle(rate=5)  # a burst of one second's worth, as SES allows
    started = time.monotonic()
    # The rate comes from GetSendQuota (the stand-in's MaxSendRate), read by one of them.
    processes = [sender(project, stand_in, tmp_path, first, 10) for first in (0, 10)]
    outputs = [p.communicate(timeout=120) for p in processes]
    elapsed = time.monotonic() - started

    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0 and "done 0" in out, out + err
    assert delivered(aws_env) == {f"voter{i}@example.net": 1 for i in range(20)}
    # 20 messages at 5 a second from two processes: at least 19 intervals of 0.2 s.
    assert elapsed >= 19 / 5
    # Paced together, the two processes stayed under the rate: nothing was refused.
    assert stand_in.sent == 20 and stand_in.refused == 0


def test_a_send_still_throttled_after_its_tries_is_recorded_in_the_ledger(
        project, throttle, tmp_path, aws_env):
    stand_in = throttle(rate=0.001, burst=0)  # refuses every send
    process = sender(project, stand_in, tmp_path, 100, 1, HELIOS_AWS_MAIL_ATTEMPTS="3",
                     HELIOS_AWS_MAIL_RATE="50")
    out, err = process.communicate(timeout=120)

    assert "FAILED ClientError" in out and "Throttling" in out, out + err
    assert stand_in.refused == 3 and stand_in.sent == 0
    assert delivered(aws_env) == {}
    assert ["voter100@example.net", UUID, "send-failure",
            "Throttling: Maximum sending rate exceeded. after 3 tries"] in ledger(project)


def test_a_message_ses_rejects_is_not_retried_and_is_recorded(project, throttle, tmp_path,
                                                              aws_env):
    stand_in = throttle(rate=50)
    boto3.client("ses").delete_identity(Identity=SENDER)
    boto3.client("ses").delete_identity(Identity="example.org")
    process = sender(project, stand_in, tmp_path, 200, 1, HELIOS_AWS_MAIL_RATE="50")
    out, err = process.communicate(timeout=120)

    assert "FAILED MessageRejected" in out, out + err
    assert stand_in.sent == 1 and stand_in.refused == 0  # one try: SES said no
    [row] = [r for r in ledger(project) if r[0] == "voter200@example.net"]
    assert row[2] == "send-failure" and row[3].startswith("MessageRejected:")


def test_throttled_sends_are_retried_until_taken_and_never_sent_twice(
        project, throttle, tmp_path, aws_env):
    # The process believes in twice the rate SES allows (another sender in the account,
    # say): SES refuses about every other message, and each is tried again.
    stand_in = throttle(rate=5, burst=1)
    process = sender(project, stand_in, tmp_path, 300, 10, HELIOS_AWS_MAIL_RATE="10")
    out, err = process.communicate(timeout=120)

    assert process.returncode == 0 and "done 0" in out, out + err
    assert stand_in.refused >= 3
    assert stand_in.sent == 10
    assert delivered(aws_env) == {f"voter{i}@example.net": 1 for i in range(300, 310)}
    assert not [row for row in ledger(project) if row[0].startswith("voter30")]


ELECTION = """
import uuid
from helios.models import Election
Election.objects.get_or_create(short_name="board-2026", name="Board",
                               uuid=uuid.UUID("%s"))
""" % UUID


def test_aws_mail_lists_the_undelivered_addresses_of_an_election(project, aws_env):
    # Fed by the failures of the tests above (the throttled and the rejected send).
    path, url = project
    env = helios_env(DATABASE_URL=url)
    made = run_manage(path, "shell", SETTINGS, "-c", ELECTION, env=env, timeout=120)
    assert made.returncode == 0, made.stderr

    listed = run_manage(path, "aws_mail", SETTINGS, "--election", "board-2026", "--format",
                        "csv", "--since", "2020-01-01", env=env, timeout=120)
    unknown = run_manage(path, "aws_mail", SETTINGS, "--election", "nope", env=env,
                         timeout=120)

    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == "occurred_at,address,kind,reason,election_uuid,message_id"
    rows = {line.split(",")[1]: line for line in lines[1:]}
    assert {"voter100@example.net", "voter200@example.net"} <= set(rows)
    assert "send-failure,Throttling: Maximum sending rate exceeded. after 3 tries," + UUID in (
        rows["voter100@example.net"])
    assert unknown.returncode != 0
    assert "No election has the short name or uuid 'nope'" in unknown.stderr


def test_the_open_elections_undelivered_mail_is_counted_for_aws_check(project, aws_env):
    # The election of the tests above, opened; its two failures are counted by kind.
    path, url = project
    opened = run_manage(path, "shell", SETTINGS, "-c",
                        "from helios.models import Election;"
                        "Election.objects.filter(short_name='board-2026').update("
                        "frozen_at=Election.utcnow());"
                        "import json; from helios_aws.probes import django_side;"
                        "print(json.dumps(django_side.undelivered()))",
                        env=helios_env(DATABASE_URL=url), timeout=120)
    assert opened.returncode == 0, opened.stderr
    assert json.loads(opened.stdout.strip().splitlines()[-1]) == {
        "elections": 1, "by_kind": {"send-failure": 2}}


def test_a_pace_file_that_cannot_be_opened_does_not_stop_the_mail(project, throttle,
                                                                    tmp_path, aws_env):
    stand_in = throttle(rate=50)
    process = sender(project, stand_in, tmp_path, 400, 2,
                     HELIOS_AWS_MAIL_PACE_FILE=str(tmp_path / "missing" / "pace"))
    out, err = process.communicate(timeout=120)

    assert process.returncode == 0 and "done 0" in out, out + err
    assert "cannot be opened (No such file or directory): this process paces its own" in err
    assert delivered(aws_env) == {"voter400@example.net": 1, "voter401@example.net": 1}
