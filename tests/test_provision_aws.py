"""aws_provision's AWS half against moto in server mode, over HTTP.

Most tests run the real command (``manage.py aws_configure`` then ``manage.py
aws_provision --skip-host``) in the fixture Helios project, as an operator would. The
resumption tests run the library in-process, so that a crash can be injected after each
step by wrapping the real step list, with nothing test-only in the product. moto cannot
answer ``sesv2 GetAccount``: that one call is covered with botocore's Stubber.

moto's console output is a fixed text without SSH host keys; the stand-in is given the
text cloud-init really prints (rig.cloud_init_console, with real keys made by
ssh-keygen), as AWS would serve it.
"""

import datetime
import json
import os
import pty
import re
import shutil
import stat
import subprocess
import sys

import boto3
import moto.ec2.responses.general as moto_console
import pytest
from botocore.stub import Stubber

import rig
from fixtures import helios_env, make_fixture_project, run_manage
from helios_aws import envfile, params, provision
from helios_aws.aws.compute import HostKeyStep
from helios_aws.aws.mail import MailStep
from helios_aws.aws.steps import steps as aws_steps
from helios_aws.engine import Output, Runner, Step, StepFailed
from helios_aws.errors import ConfigError
from helios_aws.host import base as host_base

NAME = "helios"
DOMAIN = "vote.example.org"
ZONE = "example.org"
EMAIL = "elections@example.org"
CIDR = "203.0.113.7/32"
SETTINGS = "--settings=helios_aws.settings_overrides.production"
STEP_LINE = re.compile(r"^\[\s*\d+/\d+\] (.+): (\w+) \(", re.M)
TAGGED = [{"Name": "tag:helios-aws:deployment", "Values": [NAME]}]
LIVE = [{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]

ONE_OF_EACH = {
    "instances": 1, "addresses": 1, "security_groups": 1, "key_pairs": 1, "roles": 1,
    "instance_profiles": 1, "users": 0, "a_records": 1, "dkim_cnames": 3, "spf": 1,
    "dmarc": 1, "ses_identities": 2, "volumes": 1, "snapshots": 0,
}
NOTHING = dict.fromkeys(ONE_OF_EACH, 0)
# What the console shows before cloud-init has printed the host keys.
EARLY_BOOT_CONSOLE = (
    "[    0.000000] Linux version 6.1.112-122.189.amzn2023.x86_64 (mockbuild@ip-10-0-54-154) "
    "(gcc (GCC) 11.4.1 20230605 (Red Hat 11.4.1-2)) #1 SMP PREEMPT_DYNAMIC\r\n"
    "[    0.000000] Command line: BOOT_IMAGE=(hd0,gpt1)/boot/vmlinuz-6.1.112 "
    "console=tty0 console=ttyS0,115200n8\r\n"
    "[    2.981230] cloud-init[1583]: Cloud-init v. 22.2.2 running 'init-local'\r\n")


# No server answers SSH here (the instances are moto's), so whether an election is open
# cannot be read: the election freeze lets --stop and --destroy through only on purpose.
NO_SERVER = "tests: the instance has no server answering SSH"
FORCED = ("--force", "--reason", NO_SERVER)


def forced(project, *flags, check=True):
    """aws_provision --force --reason NO_SERVER: its audit record goes to the backup bucket,
    whose TLS-only policy moto takes for a refusal of every object request (see
    test_backup.py): the policy goes first."""
    s3 = boto3.client("s3")
    for bucket in s3.list_buckets()["Buckets"]:
        s3.delete_bucket_policy(Bucket=bucket["Name"])
    return run(project, *FORCED, *flags, check=check)


# ------------------------------------------------------------------------ the stand-in


@pytest.fixture(scope="module")
def host_keys(tmp_path_factory):
    """Real host public keys, by the key type ssh-keygen names."""
    directory = tmp_path_factory.mktemp("host-keys")
    keys = {}
    for option in ("ecdsa", "ed25519"):
        path = directory / f"ssh_host_{option}_key"
        subprocess.run(["ssh-keygen", "-q", "-t", option, "-N", "", "-f", str(path)], check=True)
        public = path.with_suffix(".pub").read_text().strip()
        keys[rig.ssh_keygen_fingerprint(public)[2]] = public
    return keys


@pytest.fixture(autouse=True)
def aws(aws_env, monkeypatch, host_keys):
    """moto, emptied, serving the console text cloud-init really prints (moto's own has
    no host keys)."""
    monkeypatch.setattr(moto_console, "SAMPLE_CONSOLE_OUTPUT",
                        rig.cloud_init_console(list(host_keys.values())))
    return aws_env


def create_zone(name=ZONE):
    return boto3.client("route53").create_hosted_zone(
        Name=name, CallerReference=name)["HostedZone"]["Id"]


def inventory():
    """How many of each thing moto holds (all of them, tagged or not)."""
    ec2, iam = boto3.client("ec2"), boto3.client("iam")
    route53, ses = boto3.client("route53"), boto3.client("ses")
    rrsets = []
    for zone in route53.list_hosted_zones()["HostedZones"]:
        rrsets += route53.list_resource_record_sets(HostedZoneId=zone["Id"])["ResourceRecordSets"]

    def txt(name, start):
        return sum(1 for r in rrsets if r["Name"] == name and r["Type"] == "TXT"
                   for v in r["ResourceRecords"] if v["Value"].strip('"').startswith(start))

    return {
        "instances": sum(len(r["Instances"]) for r in
                         ec2.describe_instances(Filters=LIVE)["Reservations"]),
        "addresses": len(ec2.describe_addresses()["Addresses"]),
        "security_groups": sum(1 for g in ec2.describe_security_groups()["SecurityGroups"]
                               if g["GroupName"] != "default"),
        "key_pairs": len(ec2.describe_key_pairs()["KeyPairs"]),
        "roles": len(iam.list_roles()["Roles"]),
        "instance_profiles": len(iam.list_instance_profiles()["InstanceProfiles"]),
        "users": len(iam.list_users()["Users"]),
        "a_records": sum(1 for r in rrsets if r["Type"] == "A"),
        "dkim_cnames": sum(1 for r in rrsets if r["Type"] == "CNAME"
                           and "._domainkey." in r["Name"]),
        "spf": txt(f"{ZONE}.", "v=spf1"),
        "dmarc": txt(f"_dmarc.{ZONE}.", "v=DMARC1"),
        "ses_identities": len(ses.list_identities()["Identities"]),
        "volumes": len(ec2.describe_volumes(Filters=TAGGED)["Volumes"]),
        "snapshots": len(ec2.describe_snapshots(OwnerIds=["self"], Filters=TAGGED)["Snapshots"]),
    }


def tagged_left():
    """Everything still tagged for the deployment, by kind."""
    ec2, iam = boto3.client("ec2"), boto3.client("iam")
    found = {
        "instances": [i["InstanceId"] for r in ec2.describe_instances(
            Filters=TAGGED + LIVE)["Reservations"] for i in r["Instances"]],
        "addresses": [a["PublicIp"] for a in ec2.describe_addresses(Filters=TAGGED)["Addresses"]],
        "security_groups": [g["GroupId"] for g in ec2.describe_security_groups(
            Filters=TAGGED)["SecurityGroups"]],
        "key_pairs": [k["KeyName"] for k in ec2.describe_key_pairs(Filters=TAGGED)["KeyPairs"]],
        "volumes": [v["VolumeId"] for v in ec2.describe_volumes(Filters=TAGGED)["Volumes"]],
        "snapshots": [s["SnapshotId"] for s in ec2.describe_snapshots(
            OwnerIds=["self"], Filters=TAGGED)["Snapshots"]],
        "roles": [r["RoleName"] for r in iam.list_roles()["Roles"]],
        "instance_profiles": [p["InstanceProfileName"]
                              for p in iam.list_instance_profiles()["InstanceProfiles"]],
        "users": [u["UserName"] for u in iam.list_users()["Users"]],
    }
    return {kind: items for kind, items in found.items() if items}


# ------------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    """The fixture project after ``aws_configure`` with the usual parameters."""
    project = make_fixture_project(tmp_path_factory.mktemp("configured"), "requirements")
    configure(project, "--ssh-cidr", CIDR)
    return project


@pytest.fixture
def project(configured, tmp_path):
    """A fresh copy of the configured project (aws_configure takes a second a run)."""
    copy = tmp_path / "helios-server"
    shutil.copytree(configured, copy, symlinks=True)
    return copy


def configure(project, *flags):
    result = run_manage(project, "aws_configure", SETTINGS, "--no-input", "--domain", DOMAIN,
                        "--email", EMAIL, "--auth-systems", "password", *flags)
    assert result.returncode == 0, result.stderr
    return project / "deploy"


def run(project, *flags, env=None, check=True):
    result = run_manage(project, "aws_provision", SETTINGS, "--skip-host", *flags, env=env)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def outcomes(stdout):
    return dict(STEP_LINE.findall(stdout))


def state(deploy):
    return json.loads((deploy / "state.json").read_text())


def assert_no_secret(deploy, texts, extra=()):
    """The .env's secrets, the private key and ``extra`` appear in none of ``texts``."""
    env = envfile.parse((deploy / ".env").read_text())
    secrets = [env[key] for key in envfile.SECRET_KEYS if env.get(key)] + list(extra)
    key_file = deploy / "ssh-key.pem"
    if key_file.exists():
        secrets += [line for line in key_file.read_text().splitlines()
                    if line and not line.startswith("-----")]
    assert secrets
    for text in texts:
        for secret in secrets:
            assert secret not in text


def ssh_keygen_public(path):
    """The public half of a private key, as OpenSSH derives it."""
    return subprocess.run(["ssh-keygen", "-y", "-f", str(path)], check=True,
                          capture_output=True, text=True).stdout.strip()


def test_first_run_creates_one_of_each_and_a_second_run_changes_nothing(project, host_keys):
    create_zone()
    deploy = project / "deploy"

    first = run(project, "--verbosity", "2")

    assert outcomes(first.stdout) == {
        "AWS account": "unchanged", "machine image": "unchanged", "key pair": "created",
        "security group": "created", "mail permissions (IAM role)": "created",
        "backup bucket (S3)": "created", "EC2 instance": "created", "Elastic IP": "created",
        "DNS record": "created", "mail (SES)": "created", "SSH host key": "created",
        "alerts (SNS)": "created", "machine alarms (CloudWatch)": "created",
        "site health check (Route 53)": "created"}
    assert "Done: 12 created, 2 unchanged." in first.stdout
    # In a pipe each step's line appears when it starts, then with its outcome.
    shown = first.stdout.splitlines()
    ended, = [i for i, line in enumerate(shown) if line.startswith("[ 4/14] security group: ")]
    assert shown.index("[ 4/14] security group ...") < ended
    assert inventory() == ONE_OF_EACH
    key_file = deploy / "ssh-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")

    ec2 = boto3.client("ec2")
    instance = ec2.describe_instances(Filters=TAGGED + LIVE)["Reservations"][0]["Instances"][0]
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["InstanceType"] == "t3.small"
    assert {"Key": "Name", "Value": f"helios-{NAME}"} in instance["Tags"]
    assert instance["IamInstanceProfile"]["Arn"].endswith(
        f"instance-profile/helios-aws/helios-{NAME}-us-east-1")
    volume = ec2.describe_volumes(Filters=TAGGED)["Volumes"][0]
    assert (volume["VolumeType"], volume["Size"], volume["Encrypted"]) == ("gp3", 16, True)
    address = ec2.describe_addresses(Filters=TAGGED)["Addresses"][0]
    assert address["InstanceId"] == instance["InstanceId"]

    group = ec2.describe_security_groups(Filters=TAGGED)["SecurityGroups"][0]
    rules = {(p["FromPort"], r.get("CidrIp") or r.get("CidrIpv6")) for p in group["IpPermissions"]
             for r in p["IpRanges"] + p["Ipv6Ranges"]}
    assert rules == {(22, CIDR), (80, "0.0.0.0/0"), (80, "::/0"), (443, "0.0.0.0/0"),
                     (443, "::/0")}

    policy = boto3.client("iam").get_role_policy(
        RoleName=f"helios-{NAME}-us-east-1", PolicyName="helios-ses-send")["PolicyDocument"]
    statement, rate = policy["Statement"]
    assert statement["Action"] == ["ses:SendRawEmail"]
    assert rate["Action"] == ["ses:GetSendQuota"] and rate["Resource"] == "*"
    assert sorted(statement["Resource"]) == [
        f"arn:aws:ses:us-east-1:123456789012:identity/{EMAIL}",
        f"arn:aws:ses:us-east-1:123456789012:identity/{ZONE}"]

    zone_id = boto3.client("route53").list_hosted_zones()["HostedZones"][0]["Id"]
    a_record, = [r for r in boto3.client("route53").list_resource_record_sets(
        HostedZoneId=zone_id)["ResourceRecordSets"] if r["Type"] == "A"]
    assert a_record["Name"] == f"{DOMAIN}." and a_record["ResourceRecords"] == [
        {"Value": address["PublicIp"]}]

    recorded = state(deploy)["host_key"]
    assert recorded["instance_id"] == instance["InstanceId"]
    assert recorded["fingerprints"] == {
        kind: rig.ssh_keygen_fingerprint(public)[1] for kind, public in host_keys.items()}
    assert sorted(recorded["keys"]) == sorted(
        " ".join(public.split()[:2]) for public in host_keys.values())

    second = run(project)

    assert set(outcomes(second.stdout).values()) == {"unchanged"}
    assert len(outcomes(second.stdout)) == 14
    assert "Done: no changes." in second.stdout
    assert inventory() == ONE_OF_EACH
    log = (deploy / "provision.log").read_text()
    assert_no_secret(deploy, [first.stdout, first.stderr, second.stdout, log,
                              (deploy / "state.json").read_text()])
    # The log's times are UTC and say so, whatever Helios's TIME_ZONE (Los Angeles here).
    stamp = " ".join(log.splitlines()[-1].split()[:2])
    logged = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc)
    assert abs(datetime.datetime.now(datetime.timezone.utc) - logged).total_seconds() < 600


def run_in_terminal(project, *flags):
    """``aws_provision --skip-host FLAGS`` with its output on a pseudo-terminal; (exit
    status, what the terminal received)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "aws_provision", SETTINGS, "--skip-host", *flags],
        cwd=project, env=helios_env(), stdin=subprocess.DEVNULL, stdout=terminal,
        stderr=subprocess.PIPE)
    os.close(terminal)
    received = b""
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # EIO: the command has ended and closed the terminal
            break
        if not data:
            break
        received += data
    os.close(controller)
    process.wait(timeout=120)
    return process.returncode, received.decode()


def test_on_a_terminal_each_step_line_is_rewritten_in_place(project):
    create_zone()

    status, received = run_in_terminal(project)

    assert status == 0
    for index, name in enumerate(["AWS account", "machine image", "key pair", "security group",
                                  "mail permissions (IAM role)", "backup bucket (S3)",
                                  "EC2 instance", "Elastic IP", "DNS record", "mail (SES)",
                                  "SSH host key", "alerts (SNS)", "machine alarms (CloudWatch)",
                                  "site health check (Route 53)"], 1):
        assert f"\r\x1b[K[{index:>2}/14] {name}: running, 0s" in received
    # What stays on the screen: one line per step, with its outcome, no start lines.
    screen = [re.sub(r"\x1b\[[0-9;]*m", "", line.split("\r\x1b[K")[-1])
              for line in received.split("\r\n")]
    steps = [line for line in screen if line.startswith("[")]
    assert len(steps) == 14 and all(STEP_LINE.match(line) for line in steps)
    assert "Done: 12 created, 2 unchanged." in screen


def test_a_lost_state_file_means_adopting_by_tag_not_creating(project):
    create_zone()
    deploy = project / "deploy"
    run(project)
    before = state(deploy)
    (deploy / "state.json").unlink()

    adopted = run(project)

    assert "created" not in outcomes(adopted.stdout).values()
    assert outcomes(adopted.stdout)["EC2 instance"] == "adopted"
    assert outcomes(adopted.stdout)["Elastic IP"] == "adopted"
    assert inventory() == ONE_OF_EACH
    after = state(deploy)
    for key in ("instance", "elastic_ip", "security_group", "key_pair", "iam", "host_key"):
        assert after[key] == before[key], key
    assert "Done: no changes." in run(project).stdout


def test_plan_shows_every_step_and_the_monthly_cost_and_changes_nothing(project):
    create_zone()
    deploy = project / "deploy"

    plan = run(project, "--plan")

    assert plan.stdout.startswith("OS: Debian 13 (trixie) (the default: the test suite proves "
                                  "it end to end).\n")
    assert ("latest Debian 13 (trixie) (x86_64) from /aws/service/debian/release/13/latest/"
            "amd64") in plan.stdout
    assert [line.split(": ")[1] for line in plan.stdout.splitlines()
            if STEP_LINE.match(line + " (")] == (
        ["keep", "keep"] + ["create"] * 12)
    assert "EC2 t3.small (on demand, all month)" in plan.stdout
    # The local AWS serves no price list: the table stands in, and the plan says so.
    assert re.search(r"^  The instance's price: from the built-in us-east-1 table \(the AWS "
                     r"Price List API .+\); the others from the built-in us-east-1 table\.$",
                     plan.stdout, re.M), plan.stdout
    assert re.search(r"EBS gp3 root volume, 16 GiB\s+1\.28", plan.stdout)
    assert re.search(r"Public IPv4 address \(Elastic IP, \$0\.005/h\)\s+3\.65", plan.stdout)
    assert re.search(r"Route 53 hosted zone example\.org \(already there\)\s+0\.50", plan.stdout)
    assert re.search(r"S3 backups, 35 daily of 1\.0 GiB assumed\s+0\.80", plan.stdout)
    assert re.search(r"Total\s+23\.21$", plan.stdout, re.M)
    assert "Plan only: nothing was changed." in plan.stdout
    assert inventory() == NOTHING
    assert not (deploy / "ssh-key.pem").exists()
    assert not (deploy / "state.json").exists()


def test_the_host_half_is_planned_on_the_server_while_an_aws_change_is_pending(project, sshd):
    create_zone()
    fresh = run_manage(project, "aws_provision", SETTINGS, "--plan")
    assert fresh.returncode == 0, fresh.stderr
    assert "The host half (" in fresh.stdout
    assert "is not planned: there is no server yet" in fresh.stdout

    run(project)  # the AWS half; then an AWS change is pending (a new SSH address)
    configure(project, "--ssh-cidr", "198.51.100.9/32")
    plan = run_manage(project, "aws_provision", SETTINGS, "--plan", "--host", sshd.host,
                      "--ssh-port", str(sshd.port), "--ssh-key", str(sshd.client_key),
                      "--ssh-user", sshd.user, "--trust-host-key", sshd.host_key_fingerprint)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert re.search(r"security group: update", plan.stdout)
    assert ("The host half, read from the server as it is now (the AWS changes above come "
            "first: ") in plan.stdout
    # The server was reached and read: this machine (the stand-in) is not Debian 13, which
    # the host half's first step refuses, and the plan says so.
    assert "The host half (" in plan.stdout and "cannot be planned: The deployment is for " \
        "Debian 13 (trixie), but the server runs Debian" in plan.stdout
    assert "Plan only: nothing was changed." in plan.stdout

    nobody = rig.free_port()
    unreachable = run_manage(project, "aws_provision", SETTINGS, "--plan", "--host",
                             "127.0.0.1", "--ssh-port", str(nobody), "--ssh-key",
                             str(sshd.client_key))
    assert unreachable.returncode == 0, unreachable.stderr
    assert "cannot be planned: " in unreachable.stdout
    assert f"127.0.0.1:{nobody}" in unreachable.stdout


def test_ssh_open_to_the_world_is_allowed_only_when_asked_and_warned_about(project):
    create_zone()
    configure(project, "--ssh-cidr", "0.0.0.0/0", "--instance-type", "m5.2xlarge")

    plan = run(project, "--plan")

    assert "Warning: --ssh-cidr 0.0.0.0/0 opens SSH (port 22) to the whole internet" in plan.stdout
    assert "allow tcp 22 from 0.0.0.0/0" in plan.stdout
    assert re.search(r"EC2 m5\.2xlarge \(on demand, all month\)\s+price unknown$", plan.stdout,
                     re.M)
    assert re.search(r"Total\s+8\.03 \+ unknown$", plan.stdout, re.M)


def test_plan_says_when_the_os_is_not_the_one_proven_end_to_end(project):
    create_zone()
    configure(project, "--ssh-cidr", CIDR, "--os", "al2023")

    plan = run(project, "--plan")

    assert plan.stdout.startswith("OS: Amazon Linux 2023 (not the default: its recipe is "
                                  "checked command by command but has not run end to end "
                                  "here; --os debian13 has).\n")
    assert "latest Amazon Linux 2023 (x86_64)" in plan.stdout


def _no_credentials():
    env = helios_env()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        env.pop(name, None)
    return env


def _set_record(deploy, **values):
    record = json.loads((deploy / "deployment.json").read_text())
    record.update(values)
    (deploy / "deployment.json").write_text(json.dumps(record))


@pytest.mark.parametrize("case, expected", [
    ("unknown region", "--region 'us-east-9' is not an AWS region"),
    ("instance type that does not exist", "--instance-type t3.gigantic does not exist in "
                                          "region us-east-1"),
    ("instance type of another architecture", "t4g.small runs arm64, but the deployment's "
                                              "--arch is x86_64"),
    ("no credentials", "No AWS credentials were found"),
    ("no hosted zone", "No Route 53 hosted zone holds vote.example.org"),
    ("invalid CIDR", "--ssh-cidr '203.0.113.300/32' is not an IP network"),
    ("key file that is no key and would be overwritten", "exists, but is not an SSH private "
                                                         "key"),
])
def test_bad_input_fails_clearly_before_anything_is_created(project, case, expected):
    if case != "no hosted zone":
        create_zone()
    deploy = project / "deploy"
    flags, env = [], None
    if case == "unknown region":
        flags = ["--region", "us-east-9"]
    elif case == "instance type that does not exist":
        _set_record(deploy, instance_type="t3.gigantic")
    elif case == "instance type of another architecture":
        _set_record(deploy, instance_type="t4g.small")
    elif case == "no credentials":
        env = _no_credentials()
    elif case == "invalid CIDR":
        _set_record(deploy, ssh_cidr="203.0.113.300/32")
    elif case == "key file that is no key and would be overwritten":
        (deploy / "ssh-key.pem").write_text("the only key to an older server\n")

    result = run(project, *flags, env=env, check=False)

    assert result.returncode != 0
    assert "CommandError: " in result.stderr
    assert expected in result.stderr
    assert "Hint: " in result.stderr
    assert "Traceback" not in result.stderr
    assert inventory() == NOTHING
    if case == "key file that is no key and would be overwritten":
        assert (deploy / "ssh-key.pem").read_text() == "the only key to an older server\n"
    if case == "no hosted zone":
        assert "aws route53 create-hosted-zone --name example.org" in result.stderr


def test_ses_access_key_goes_into_the_env_once_and_never_into_output(project):
    create_zone()
    deploy = configure(project, "--ses-credentials", "keys")

    first = run(project, "--verbosity", "2")

    assert outcomes(first.stdout)["mail credentials (IAM user)"] == "created"
    env_file = deploy / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    env = envfile.parse(env_file.read_text())
    iam = boto3.client("iam")
    user = f"helios-{NAME}-us-east-1"
    keys = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [env["AWS_SES_ACCESS_KEY_ID"]]
    assert len(env["AWS_SES_SECRET_ACCESS_KEY"]) >= 40
    assert iam.list_roles()["Roles"] == []
    policy = iam.get_user_policy(UserName=user, PolicyName="helios-ses-send")["PolicyDocument"]
    assert [s["Action"] for s in policy["Statement"]] == [["ses:SendRawEmail"],
                                                          ["ses:GetSendQuota"]]
    instance = boto3.client("ec2").describe_instances(
        Filters=TAGGED + LIVE)["Reservations"][0]["Instances"][0]
    assert "IamInstanceProfile" not in instance

    second = run(project, "--verbosity", "2")

    assert outcomes(second.stdout)["mail credentials (IAM user)"] == "unchanged"
    assert envfile.parse(env_file.read_text()) == env
    assert [k["AccessKeyId"] for k in iam.list_access_keys(UserName=user)[
        "AccessKeyMetadata"]] == [env["AWS_SES_ACCESS_KEY_ID"]]
    assert_no_secret(deploy, [first.stdout, first.stderr, second.stdout, second.stderr,
                              (deploy / "provision.log").read_text(),
                              (deploy / "state.json").read_text()],
                     extra=[env["AWS_SES_SECRET_ACCESS_KEY"]])


def test_destroy_asks_first_snapshots_then_leaves_only_the_snapshot(project):
    create_zone()
    deploy = project / "deploy"
    run(project)

    refused = run(project, "--destroy", check=False)

    assert refused.returncode != 0 and "asks for confirmation" in refused.stderr
    assert inventory() == ONE_OF_EACH
    # What the confirmation stands over: the final backup first, and the bucket kept.
    assert "1. A final backup of the server (database and uploaded files)" in refused.stdout
    assert re.search(r"  - S3 bucket helios-helios-backup-\S+ with the backups .*kept on "
                     r"purpose", refused.stdout)

    destroyed = forced(project, "--destroy", "--no-input", "--no-backup")

    left = tagged_left()
    assert list(left) == ["snapshots"] and len(left["snapshots"]) == 1
    assert f"snapshot {left['snapshots'][0]} of the root volume: completed" in destroyed.stdout
    assert f"snapshot {left['snapshots'][0]} (16 GiB), kept on purpose" in destroyed.stdout
    # The long waits say when they start (and, past 30 s, that they are still going).
    shown = destroyed.stdout.splitlines()
    assert shown.index("snapshot of the root volume ...") < shown.index(
        f"snapshot {left['snapshots'][0]} of the root volume: completed")
    assert shown.index("deleting what deployment helios made ...") < shown.index(
        "deleted key pair helios-helios")
    assert inventory() == dict(NOTHING, snapshots=1)
    assert (deploy / "ssh-key.pem").exists()
    assert "kept the private key" in destroyed.stdout


def test_destroy_plan_shows_everything_destroy_would_do_with_costs(project):
    create_zone()
    deploy = project / "deploy"
    run(project)
    before = (deploy / "state.json").read_text()

    plan = run(project, "--destroy", "--plan")

    text = plan.stdout
    assert text.startswith("aws_provision --destroy would, for deployment helios:\n")
    assert "1. A final backup of the server (database and uploaded files) to the backup " \
        "bucket; if it fails, nothing is deleted (--no-backup skips it)." in text
    assert "2. A snapshot of the root volume, kept (about $0.80/month at most)." in text
    assert "3. Deleted, in AWS account 123456789012 (us-east-1):" in text
    iid = boto3.client("ec2").describe_instances(Filters=TAGGED + LIVE)[
        "Reservations"][0]["Instances"][0]["InstanceId"]
    assert f"     - instance {iid} (t3.small, running) and its root volume" in text
    assert re.search(r"     - Elastic IP \S+ \(eipalloc-", text)
    assert re.search(r"     - DNS record A vote\.example\.org -> ", text)
    assert re.search(r"EC2 t3\.small \(on demand, all month\)\s+15\.18", text)
    assert re.search(r"Public IPv4 address \(Elastic IP, \$0\.005/h\)\s+3\.65", text)
    kept = text.split("Kept:\n")[1]
    assert "  - the snapshot of the root volume (up to $0.80/month)" in kept
    assert re.search(r"  - S3 bucket helios-helios-backup-\S+ with the backups \(0\.00 GiB\), "
                     r"kept on purpose: delete it with aws_provision --destroy "
                     r"--delete-backups helios \(\$0\.00/month", kept)
    assert "Plan only: nothing was changed." in text
    assert inventory() == ONE_OF_EACH
    assert (deploy / "state.json").read_text() == before

    without = run(project, "--destroy", "--plan", "--no-backup", "--no-snapshot",
                  "--delete-backups", NAME)
    assert "1. No final backup (--no-backup)" in without.stdout
    assert "2. No snapshot (--no-snapshot)" in without.stdout
    assert "and EVERY BACKUP in it (--delete-backups)" in without.stdout
    assert "S3 bucket" not in without.stdout.split("Kept:\n")[1]
    assert inventory() == ONE_OF_EACH


def test_provisioning_again_after_destroy_imports_the_saved_key(project):
    create_zone()
    deploy = project / "deploy"
    key_file = deploy / "ssh-key.pem"
    ec2 = boto3.client("ec2")
    run(project)
    saved = key_file.read_bytes()
    before, = ec2.describe_key_pairs(Filters=TAGGED)["KeyPairs"]
    destroyed = forced(project, "--destroy", "--no-input", "--no-snapshot", "--no-backup")
    assert (f"kept the private key {key_file} (provisioning this deployment again imports "
            "its public half as the new key pair)") in destroyed.stdout

    again = run(project, "--verbosity", "2")

    assert outcomes(again.stdout)["key pair"] == "created"
    assert inventory() == ONE_OF_EACH
    after, = ec2.describe_key_pairs(Filters=TAGGED, IncludePublicKey=True)["KeyPairs"]
    assert after["KeyPairId"] != before["KeyPairId"]
    assert after["KeyFingerprint"] == before["KeyFingerprint"]
    assert after["PublicKey"].split()[:2] == ssh_keygen_public(key_file).split()[:2]
    assert (f"Note: Key pair helios-{NAME} was imported from the public half of the saved "
            f"private key {key_file}") in again.stdout
    assert key_file.read_bytes() == saved
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert_no_secret(deploy, [again.stdout, again.stderr, (deploy / "provision.log").read_text()])
    assert "Done: no changes." in run(project).stdout


def test_destroy_without_snapshot_leaves_nothing_tagged(project):
    create_zone()
    configure(project, "--ses-credentials", "keys")
    run(project)

    destroyed = forced(project, "--destroy", "--no-input", "--no-snapshot", "--no-backup",
                    "--delete-backups", NAME)

    assert tagged_left() == {}
    assert inventory() == NOTHING
    assert "Nothing tagged helios-aws:deployment=helios remains in us-east-1." in destroyed.stdout
    again = forced(project, "--destroy", "--no-input", "--no-backup")
    assert "Nothing of deployment helios exists in AWS" in again.stdout


def test_stop_and_start(project):
    create_zone()
    run(project)
    ec2 = boto3.client("ec2")

    def instance_state():
        reservations = ec2.describe_instances(Filters=TAGGED + LIVE)["Reservations"]
        return reservations[0]["Instances"][0]["State"]["Name"]

    stopped = forced(project, "--stop")
    assert instance_state() == "stopped"
    forced_line, rest = stopped.stdout.split("\n", 1)
    assert forced_line.startswith("--force: --stop although the elections could not be read; "
                                  "audit record written to s3://helios-helios-backup-")
    assert rest.startswith("disable the alarms ...\nDisabled the actions of 3 alarms")
    assert "\nstop EC2 instance ...\n" in stopped.stdout
    assert "the Elastic IP ($3.65/month) still do" in stopped.stdout

    run(project, "--start")
    assert instance_state() == "running"
    # (the bucket policy that forced() took away is put back, and nothing else changes)
    again = run(project).stdout
    assert re.search(r"Done: \d+ unchanged, 1 updated\.", again)
    assert re.search(r"backup bucket \(S3\): updated", again)


# ------------------------------------------------------------------------ in-process



def in_process(tmp_path, options=None, **fields):
    """A recorded deployment and a context to run the library with, as the command does
    (with --skip-host unless ``options`` say otherwise)."""
    out_dir = tmp_path / "deploy"
    deployment = params.build([{"domain": DOMAIN, "email": EMAIL, "ssh_cidr": CIDR, **fields}])
    params.write_record(out_dir, deployment)
    lines = []
    out = Output(lines.append, verbosity=2)
    options = {"skip_host": True} if options is None else options
    return provision.make_context(deployment, out_dir, options, out), out, lines


class Crash(Exception):
    """What a crash looks like to the runner: not one of the project's errors."""


class CrashAfter(Step):
    """The real step, then a crash (or Ctrl-C) right after it has done its work."""

    def __init__(self, step, crash):
        self.step, self.crash, self.name = step, crash, step.name

    def read(self, ctx):
        return self.step.read(ctx)

    def plan(self, ctx, current):
        return self.step.plan(ctx, current)

    def apply(self, ctx, current, change):
        self.step.apply(ctx, current, change)
        raise self.crash()


# Steps 1 and 2 (account, image) change nothing: a crash after them is a crash before 3.
# Crashes and Ctrl-C (which the runner catches to save the state file) take turns.
@pytest.mark.parametrize("index, crash", [(i, (Crash, KeyboardInterrupt)[i % 2])
                                          for i in range(2, 11)])
def test_a_run_that_dies_after_any_step_is_finished_by_the_next(tmp_path, index, crash):
    create_zone()
    ctx, out, _ = in_process(tmp_path)
    steps = aws_steps(ctx.deployment)
    steps[index] = CrashAfter(steps[index], crash)

    # Ctrl-C stays an interruption (the command turns it into one line and status 130).
    with pytest.raises((Crash, KeyboardInterrupt)):
        provision.apply(ctx, out, steps)

    ctx, out, lines = in_process(tmp_path)
    results = provision.provision(ctx, out)

    assert inventory() == ONE_OF_EACH
    done = {step.name: outcome for step, outcome, _ in results}
    for step in aws_steps(ctx.deployment)[:index + 1]:
        assert done[step.name] != "created", (step.name, lines)


def test_security_group_drift_is_reported_and_put_right(tmp_path):
    create_zone()
    ctx, out, _ = in_process(tmp_path)
    provision.provision(ctx, out)
    ec2 = boto3.client("ec2")
    group_id = ctx.state.get("security_group")["id"]
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}])

    ctx, out, lines = in_process(tmp_path)
    results = provision.provision(ctx, out)

    assert {step.name: outcome for step, outcome, _ in results}["security group"] == "updated"
    assert "      remove tcp 5432 from 0.0.0.0/0 (PostgreSQL is never exposed)" in lines
    assert "      allow tcp 443 from ::/0 (missing)" in lines
    group = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    ports = sorted((p["FromPort"], len(p["IpRanges"]), len(p["Ipv6Ranges"]))
                   for p in group["IpPermissions"])
    assert ports == [(22, 1, 0), (80, 1, 1), (443, 1, 1)]


def test_the_deployment_stays_in_its_account_and_region(tmp_path):
    create_zone()
    ctx, out, _ = in_process(tmp_path)
    provision.provision(ctx, out)

    ctx, out, _ = in_process(tmp_path, region="us-west-2")
    with pytest.raises(ConfigError) as raised:
        provision.provision(ctx, out)

    assert "resources are in region us-east-1" in raised.value.message
    assert inventory() == ONE_OF_EACH
    assert boto3.client("ec2", region_name="us-west-2").describe_key_pairs()["KeyPairs"] == []


def test_ses_sandbox_status_and_quota_are_reported_with_what_to_do(tmp_path):
    create_zone()
    ctx, _, _ = in_process(tmp_path)
    step = MailStep()
    with Stubber(ctx.aws.client("sesv2")) as stub:
        stub.add_response("get_account", {
            "ProductionAccessEnabled": False, "SendingEnabled": True,
            "SendQuota": {"Max24HourSend": 200.0, "MaxSendRate": 1.0, "SentLast24Hours": 3.0},
            "EnforcementStatus": "HEALTHY", "DedicatedIpAutoWarmupEnabled": False})

        change = step.plan(ctx, step.read(ctx))

        stub.assert_no_pending_responses()
    assert ("SES sandbox in us-east-1: 200 messages a day, 1 a second, 3 sent in the last "
            "24 hours; bounce rate none published, complaint rate none published"
            ) in change.details
    sandbox, = [n for n in ctx.facts["notes"] if "in the sandbox" in n]
    assert "mail goes only to verified addresses" in sandbox
    assert "aws_provision --request-production-access --use-case TEXT" in sandbox


def test_ses_production_access_is_reported_without_a_warning(tmp_path):
    create_zone()
    ctx, _, _ = in_process(tmp_path)
    step = MailStep()
    with Stubber(ctx.aws.client("sesv2")) as stub:
        stub.add_response("get_account", {
            "ProductionAccessEnabled": True, "SendingEnabled": True,
            "SendQuota": {"Max24HourSend": 50000.0, "MaxSendRate": 14.0,
                          "SentLast24Hours": 0.0}})

        change = step.plan(ctx, step.read(ctx))

    assert ("SES production access in us-east-1: 50000 messages a day, 14 a second, 0 sent "
            "in the last 24 hours; bounce rate none published, complaint rate none published"
            ) in change.details
    assert not [n for n in ctx.facts.get("notes", []) if "sandbox" in n]


def test_ses_sandbox_status_is_unknown_when_aws_cannot_say(tmp_path):
    # moto answers GetAccount with a 404, as an endpoint without the operation would.
    create_zone()
    ctx, _, _ = in_process(tmp_path)
    step = MailStep()

    change = step.plan(ctx, step.read(ctx))

    assert ("SES sandbox status: unknown; bounce rate none published, complaint rate none "
            "published") in change.details
    unknown, = [n for n in ctx.facts["notes"] if "sandbox is unknown" in n]
    assert "GetAccount answered HTTP 404" in unknown


@pytest.mark.parametrize("kind, keygen, refused", [
    ("ed25519 (OpenSSH format)", ["-t", "ed25519"], None),
    ("RSA (PEM format, as EC2 made them)", ["-t", "rsa", "-b", "2048", "-m", "PEM"], None),
    ("ECDSA", ["-t", "ecdsa"], "is not an ed25519 or RSA key, the only kinds EC2 imports"),
    ("with a passphrase", ["-t", "ed25519", "-N", "a passphrase"], "is protected by a "
                                                                  "passphrase"),
])
def test_a_saved_key_becomes_the_key_pair_or_is_refused_before_anything_is_made(
        tmp_path, kind, keygen, refused):
    create_zone()
    ctx, out, _ = in_process(tmp_path)
    key_file = ctx.out_dir / "ssh-key.pem"
    subprocess.run(["ssh-keygen", "-q", "-N", "", *keygen, "-f", str(key_file)], check=True)
    key_file.with_suffix(".pem.pub").unlink()
    saved = key_file.read_bytes()

    if refused:
        with pytest.raises(ConfigError) as raised:
            provision.provision(ctx, out)
        assert refused in raised.value.message and str(key_file) in raised.value.message
        assert f"ssh-keygen -y -f {key_file}" in raised.value.hint
        assert inventory() == NOTHING
    else:
        provision.provision(ctx, out)
        pair, = boto3.client("ec2").describe_key_pairs(
            Filters=TAGGED, IncludePublicKey=True)["KeyPairs"]
        assert pair["PublicKey"].split()[:2] == ssh_keygen_public(key_file).split()[:2]
    assert key_file.read_bytes() == saved


def new_instance(tmp_path, options):
    """A context whose instance was just launched, and the HostKeyStep with short waits."""
    ctx, _, _ = in_process(tmp_path, options=options)
    image = boto3.client("ssm").get_parameters(Names=[
        "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"])
    ctx.facts["instance_id"] = boto3.client("ec2").run_instances(
        ImageId=image["Parameters"][0]["Value"], MinCount=1, MaxCount=1,
        InstanceType="t3.small")["Instances"][0]["InstanceId"]
    ctx.facts["instance_created"] = True
    step = HostKeyStep()
    step.console_timeout, step.console_delay = 1, 0.1
    return ctx, step


def test_waiting_for_the_host_key_says_what_it_waits_for_and_is_bounded(tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(moto_console, "SAMPLE_CONSOLE_OUTPUT", EARLY_BOOT_CONSOLE)
    ctx, step = new_instance(tmp_path, {})
    iid = ctx.facts["instance_id"]
    lines = []
    ctx.out = Output(lines.append, heartbeat=0.2)

    with pytest.raises(StepFailed) as raised:
        Runner([step], ctx, ctx.out).apply()

    assert (f"Waiting for the console output of {iid} to show its SSH host keys (AWS "
            "publishes it some minutes after boot; at most 1s).") in lines
    assert any(re.fullmatch(rf"\[1/1\] SSH host key: still running after \d+s; waiting for "
                            rf"the console output of {iid} \(at most 1s\)", line)
               for line in lines)
    assert "Timed out after 1s waiting to read the SSH host key" in raised.value.message
    assert "--trust-host-key, which skips this wait" in raised.value.hint
    assert "--skip-host" in raised.value.hint


def test_with_trust_host_key_the_console_is_not_awaited(tmp_path, monkeypatch, host_keys):
    monkeypatch.setattr(moto_console, "SAMPLE_CONSOLE_OUTPUT", EARLY_BOOT_CONSOLE)
    trusted = rig.ssh_keygen_fingerprint(host_keys["ED25519"])[1]
    ctx, step = new_instance(tmp_path, {"trust_host_key": trusted})
    lines = []
    ctx.out = Output(lines.append, verbosity=2)

    (result,) = Runner([step], ctx, ctx.out).apply()

    assert result[1] == "unchanged" and result[2] < 0.5
    assert ("      the host key is the one --trust-host-key names: the console output is "
            "not awaited") in lines
    assert "GetConsoleOutput" not in (ctx.out_dir / "provision.log").read_text()
    assert host_base.pinned_fingerprints(ctx) == [trusted]


def test_with_skip_host_a_host_key_not_yet_published_is_left_for_the_next_run(
        project, monkeypatch, host_keys):
    create_zone()
    deploy = project / "deploy"
    monkeypatch.setattr(moto_console, "SAMPLE_CONSOLE_OUTPUT", EARLY_BOOT_CONSOLE)

    first = run(project)

    assert outcomes(first.stdout)["SSH host key"] == "deferred"
    assert "is not in its console output yet" in first.stdout
    assert "the next run reads it before it connects to the server" in first.stdout
    assert "Done: 11 created, 1 deferred, 2 unchanged." in first.stdout
    assert "host_key" not in state(deploy)

    monkeypatch.setattr(moto_console, "SAMPLE_CONSOLE_OUTPUT",
                        rig.cloud_init_console(list(host_keys.values())))
    second = run(project)

    assert outcomes(second.stdout)["SSH host key"] == "adopted"
    assert state(deploy)["host_key"]["fingerprints"] == {
        kind: rig.ssh_keygen_fingerprint(public)[1] for kind, public in host_keys.items()}


# ------------------------------------------------------------------------ a shared account

# Two elections in one account, both mailing from example.org: the domain identity and its
# DKIM/SPF/DMARC records are shared; each has its own A record and sender address.
SHARING = {"vote": ("vote.example.org", "elections@example.org"),
           "board": ("board.example.org", "board@example.org")}
LOST_STATE = ("none", "first", "second", "both")


def shared_ctx(tmp_path, name):
    domain, email = SHARING[name]
    ctx, out, lines = in_process(tmp_path / name, name=name, domain=domain, email=email)
    ctx.options["no_snapshot"] = ctx.options["no_backup"] = True  # no server to back up
    # No server answers SSH here, so whether an election is open cannot be read: the
    # election freeze lets --destroy through only on purpose, and records why.
    ctx.options.update(force=True, reason=NO_SERVER)
    return ctx, out, lines


def only_the_backups_are_kept(remaining):
    """What --destroy leaves is the backup bucket alone, kept on purpose."""
    [(kept, _)] = remaining
    return kept.startswith("S3 bucket ") and "kept on purpose" in kept


def destroy_shared(tmp_path, name, lose_state):
    if lose_state:
        (tmp_path / name / "deploy/state.json").unlink()
    ctx, out, lines = shared_ctx(tmp_path, name)
    s3 = boto3.client("s3")
    for bucket in s3.list_buckets()["Buckets"]:  # see forced()
        s3.delete_bucket_policy(Bucket=bucket["Name"])
    remaining = provision.destroy(ctx, out, lambda prompt, expected: True)
    return remaining, "\n".join(lines)


def mail_of(name):
    """What deployment ``name`` needs to mail and be reached, as it stands in moto."""
    domain, email = SHARING[name]
    counts = inventory()
    a_records = [r["Name"] for zone in boto3.client("route53").list_hosted_zones()["HostedZones"]
                 for r in boto3.client("route53").list_resource_record_sets(
                     HostedZoneId=zone["Id"])["ResourceRecordSets"] if r["Type"] == "A"]
    identities = boto3.client("ses").list_identities()["Identities"]
    return {"domain identity": ZONE in identities, "sender": email in identities,
            "A": f"{domain}." in a_records, "dkim": counts["dkim_cnames"],
            "spf": counts["spf"], "dmarc": counts["dmarc"]}


@pytest.mark.parametrize("order", [("vote", "board"), ("board", "vote")],
                         ids=["vote-first", "board-first"])
@pytest.mark.parametrize("lost", LOST_STATE)
def test_destroying_one_of_two_deployments_keeps_what_the_other_uses(tmp_path, order, lost):
    create_zone()
    for name in SHARING:
        ctx, out, _ = shared_ctx(tmp_path, name)
        provision.provision(ctx, out)
    first, second = order
    whole = {"domain identity": True, "sender": True, "A": True, "dkim": 3, "spf": 1,
             "dmarc": 1}
    assert mail_of(first) == mail_of(second) == whole

    remaining, output = destroy_shared(tmp_path, first, lost in ("first", "both"))

    assert only_the_backups_are_kept(remaining)
    assert mail_of(second) == whole
    gone = mail_of(first)
    assert (gone["sender"], gone["A"]) == (False, False)
    assert (f"deployment {first}'s claim on SES identity {ZONE} (the identity and its mail "
            f"records stay: deployment {second} uses it)") in output
    assert f"Still there, tagged helios-aws:deployment={first}:" in output

    remaining, output = destroy_shared(tmp_path, second, lost in ("second", "both"))

    assert only_the_backups_are_kept(remaining)
    assert inventory() == NOTHING
    assert f"deleted SES identity {ZONE}" in output
    assert "stay: deployment" not in output


def test_an_identity_that_was_there_before_is_never_deleted(tmp_path):
    create_zone()
    boto3.client("ses").verify_domain_identity(Domain=ZONE)
    ctx, out, _ = shared_ctx(tmp_path, "vote")
    provision.provision(ctx, out)
    assert mail_of("vote")["dkim"] == 3

    remaining, output = destroy_shared(tmp_path, "vote", lose_state=True)

    assert only_the_backups_are_kept(remaining)
    assert (f"deployment vote's claim on SES identity {ZONE} (the identity stays: it was "
            "there before helios-aws)") in output
    assert mail_of("vote") == {"domain identity": True, "sender": False, "A": False,
                               "dkim": 0, "spf": 0, "dmarc": 0}
