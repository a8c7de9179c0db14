"""Reliability and security: what was tried, as tables a reviewer can read.

- FAULTS: aws_provision killed with SIGKILL at random moments of the AWS half, then run
  again: the deployment completes with one of each resource, no half-written file, no
  secret rotated. (The host half is killed the same way in the VM end-to-end test,
  tests/test_host_vm.py.) A second command while one works on the deployment is refused;
  the temporary files of a killed write are removed by the next run.
- BAD_INPUTS: wrong flags, values, environment, files, an impostor host key, an
  unreachable host, a missing hosted zone, a hand-edited artifact, across the three
  commands: a clear error, a non-zero exit, and nothing changed, locally or in AWS.
- INTERRUPTS: Ctrl-C (SIGINT) at each phase of the three commands, at a prompt on a
  pseudo-terminal or while the run waits on an endpoint that never answers: one line
  saying what was interrupted and how to go on, status 130, no traceback, nothing
  changed. A run killed by a timeout in a pipe still shows every step it finished.
- POSTURE: what the generated deployment exposes: only 22 (restricted), 80 and 443;
  IMDSv2; an encrypted volume; a mail policy that can only send; TLS 1.2+ without
  obsolete ciphers.
The scan for secrets in every output and log of the whole suite is tests/test_zz_secrets.py.
"""

import contextlib
import fcntl
import json
import os
import pty
import random
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

import rig
from fixtures import helios_env, run_manage
from helios_aws import envfile
from test_configure_real import install_certificate, prefixed
from test_provision_aws import (CIDR, DOMAIN, FORCED, LIVE, NOTHING, ONE_OF_EACH, SETTINGS,
                                TAGGED, create_zone, forced, inventory, run)
from test_provision_aws import configured  # noqa: F401  (a fixture: the configured project)

SEED = 20261125


@pytest.fixture
def project(configured, tmp_path, aws_env, host_console):
    copy = tmp_path / "helios-server"
    shutil.copytree(configured, copy, symlinks=True)
    return copy


@pytest.fixture(scope="module")
def host_console(tmp_path_factory):
    key = tmp_path_factory.mktemp("host-key") / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    rig.serve_console_output(rig.cloud_init_console([key.with_suffix(".pub").read_text()]))


def files_of(directory):
    """Every file's content, except the run log, which records failed attempts too."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(Path(directory).rglob("*"))
            if p.is_file() and p.name != "provision.log"}


# ---------------------------------------------------------------------------- faults


def provision_process(project):
    return subprocess.Popen(
        [sys.executable, "manage.py", "aws_provision", SETTINGS, "--skip-host"],
        cwd=project, env=helios_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def test_sigkill_at_random_moments_of_the_aws_half_then_rerun(project, aws_env):
    create_zone()
    deploy = project / "deploy"
    secrets_before = envfile.parse((deploy / ".env").read_text())

    # How long an uninterrupted run takes here, to spread the kills over it.
    probe = project.parent / "probe"
    shutil.copytree(project, probe, symlinks=True)
    started = time.monotonic()
    timed = provision_process(probe)
    timed.communicate(timeout=300)
    duration = time.monotonic() - started
    assert timed.returncode == 0
    rig.moto_fresh(aws_env)
    create_zone()

    rng = random.Random(SEED)
    kills = sorted(rng.uniform(0.3, duration) for _ in range(5))
    killed_during = []
    for delay in kills:
        process = provision_process(project)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed_during.append(round(delay, 2))
        process.communicate(timeout=60)
    assert killed_during, f"every run ended before its kill ({kills}, run takes {duration:.1f}s)"

    final = run(project)
    assert "Done" in final.stdout
    assert inventory() == ONE_OF_EACH
    assert not [p for p in deploy.rglob("*") if p.name.endswith(".tmp")]
    json.loads((deploy / "state.json").read_text())
    secrets_after = envfile.parse((deploy / ".env").read_text())
    for key in envfile.GENERATED_SECRETS:
        assert secrets_after[key] == secrets_before[key]
    assert "no changes" in run(project).stdout


@pytest.mark.parametrize("command", ["aws_configure", "aws_provision"])
def test_a_command_is_refused_while_another_works_on_the_deployment(project, command):
    create_zone()
    deploy = project / "deploy"
    before = files_of(deploy)
    held = os.open(deploy, os.O_RDONLY | os.O_DIRECTORY)  # as a running command holds it
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        extra = ["--skip-host"] if command == "aws_provision" else ["--no-input"]
        result = run_manage(project, command, SETTINGS, *extra, timeout=120)
    finally:
        os.close(held)
    assert result.returncode != 0
    assert f"Another helios-aws command is working on {deploy}" in result.stderr
    assert "Traceback" not in result.stderr
    assert files_of(deploy) == before
    assert inventory() == NOTHING


def test_temporary_files_a_killed_write_left_are_removed_by_the_next_run(project):
    create_zone()
    deploy = project / "deploy"
    (deploy / ".operator-notes.tmp").write_text("not ours: kept")
    before = files_of(deploy)
    leftovers = [deploy / ".state.json.k1ll3d_0.tmp",
                 deploy / "nginx" / ".helios-https.conf.x9x9x9x9.tmp"]
    for leftover in leftovers:
        leftover.write_text("half a fi")
    assert run(project, "--plan").returncode == 0
    assert not [p for p in leftovers if p.exists()]
    assert files_of(deploy) == before


# ---------------------------------------------------------------------------- bad inputs


def _no_credentials(env):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(key, None)
    return env


def _edit_record(project, **values):
    path = project / "deploy" / "deployment.json"
    record = json.loads(path.read_text())
    record.update(values)
    path.write_text(json.dumps(record))


def _edit_unit(project):
    unit = project / "deploy" / "systemd" / "helios-celery.service"
    unit.write_text(unit.read_text().replace("--concurrency 1", "--concurrency 4"))


def _occupy_key_file(project):
    (project / "deploy" / "ssh-key.pem").write_text("an older server's only key\n")


def _lock_key_file(project):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f",
                    str(project / "deploy" / "ssh-key.pem")], check=True)
    (project / "deploy" / "ssh-key.pem.pub").unlink()


def _drop_record(project):
    (project / "deploy" / "deployment.json").unlink()


def _hand_edit_env(line):
    def edit(project):
        with open(project / "deploy" / ".env", "a", encoding="utf-8") as env:
            env.write(line + "\n")
    edit.__name__ = f"env_line_{line[:12]}"
    return edit


def _latin1(name):
    def edit(project):
        path = project / "deploy" / name
        path.write_bytes(path.read_bytes() + "# Ren\u00e9e\n".encode("latin-1"))
    edit.__name__ = f"latin1_{name}"
    return edit


def _latin1_public_key(project):
    key = project / "operator.pub"
    key.write_bytes(b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorKey Ren\xe9e@laptop\n")
    _edit_record(project, ssh_public_key=str(key))


def _link_env(project):
    env = project / "deploy" / ".env"
    kept = project / "kept-elsewhere.env"
    env.rename(kept)
    env.symlink_to(kept)


# (command, arguments, environment change, file change, what the error must say)
BAD_INPUTS = [
    ("aws_configure", ["--domain", "vote..example.org"], None, None, "not a valid host name"),
    ("aws_configure", ["--email", "elections"], None, None, "not a valid e-mail address"),
    ("aws_configure", ["--region", "eu-middle-1"], None, None, "is not an AWS region"),
    ("aws_configure", ["--os", "al2"], None, None, "end of support on 2026-06-30"),
    ("aws_configure", ["--os", "windows"], None, None, "is not supported"),
    ("aws_configure", ["--ssh-cidr", "0.0.0.0/33"], None, None, "is not an IP network"),
    ("aws_configure", ["--service-user", "root"], None, None, "must not run as root"),
    ("aws_configure", ["--auth-systems", "password,devlogin"], None, None, "devlogin is refused"),
    ("aws_configure", ["--from-name", "Votes\u2028DEBUG=1"], None, None, "(U+2028)"),
    ("aws_configure", ["--from-name", "Votes\x85DEBUG=1"], None, None, "(U+0085)"),
    ("aws_configure", ["--google-client-id", "id\vDEBUG=1"], None, None, "(U+000B)"),
    ("aws_configure", ["--from-name", "Votes <admin@evil.example>"], None, None,
     "does not survive in the mail header"),
    ("aws_configure", ["--app-dir", "/tmp/helios"], None, None, "is inside /tmp"),
    ("aws_configure", ["--app-dir", "/home/alice"], None, None, "is a home directory"),
    ("aws_configure", ["--app-dir", "/srv/../usr"], None, None, "not a normalised path"),
    ("aws_configure", ["--app-dir", "/srv/helios%i"], None, None, "treat specially"),
    ("aws_configure", ["--app-dir", "/srv/hel ios"], None, None, "treat specially"),
    ("aws_configure", ["--host-prefix", "/var"], None, None, "system directory /var"),
    ("aws_configure", ["--domain", "vote.example.org\n"], None, None, "not a valid host name"),
    ("aws_configure", ["--name", "helios\n"], None, None, "not a valid deployment name"),
    ("aws_configure", ["--ssh-cidr", "203.0.113.7/24"], None, None,
     "Did you mean 203.0.113.0/24?"),
    ("aws_configure", ["--http-port", "8443", "--https-port", "8443"], None, None,
     "are both 8443"),
    ("aws_configure", [], None, _hand_edit_env("  DEBUG=1"), ".env, line"),
    ("aws_configure", [], None, _hand_edit_env("DEFAULT_FROM_NAME=a\vDEBUG=1"), "(U+000B)"),
    ("aws_configure", [], None, _latin1(".env"), "is not UTF-8"),
    ("aws_configure", ["--from-name", "Votes"], None, _link_env, "is a symbolic link"),
    ("aws_provision", [], None, _latin1("deployment.json"), "is not UTF-8"),
    ("aws_provision", [], None, _latin1_public_key, "operator.pub: it is not UTF-8 text"),
    ("aws_provision", [], None, _hand_edit_env("export DEBUG=1"), ".env, line"),
    ("aws_provision", [], None, _link_env, "is a symbolic link"),
    ("aws_configure", ["--volume-size", "2"], None, None, "--volume-size 2 is out of range"),
    ("aws_configure", ["--from-name", "Votes"], None, _edit_unit, "edited by hand"),
    ("aws_provision", [], None, _drop_record, "No deployment is recorded"),
    ("aws_provision", [], _no_credentials, None, "No AWS credentials"),
    ("aws_provision", ["--region", "us-east-9"], None, None, "not an AWS region"),
    ("aws_provision", [], None, lambda p: _edit_record(p, instance_type="t3.colossal"),
     "t3.colossal"),
    ("aws_provision", [], None, lambda p: _edit_record(p, domain="vote.nozone.example"),
     "hosted zone"),
    ("aws_provision", [], None, _occupy_key_file, "ssh-key.pem exists"),
    ("aws_provision", [], None, _lock_key_file, "ssh-key.pem is protected by a passphrase"),
    ("aws_provision", ["--trust-host-key", "MD5:ab:cd"], None, None,
     "is not an OpenSSH SHA256 fingerprint"),
    ("aws_provision", ["--ssh-port", "70000"], None, None, "is not a TCP port"),
    ("aws_provision", ["--plan", "--stop"], None, None, "--plan does not go with --stop"),
    ("aws_check", ["--format", "xml"], None, None, "invalid choice: 'xml'"),
    ("aws_check", ["--fail-level", "panic"], None, None, "invalid choice: 'panic'"),
    ("aws_check", [], None, _drop_record, "No deployment is recorded"),
]


def _table_id(row):
    return f"{row[0]}:{' '.join(row[1]) or (row[3] or row[2]).__name__}"[:60]


@pytest.mark.parametrize("command,args,env_change,file_change,message", BAD_INPUTS,
                         ids=[_table_id(row) for row in BAD_INPUTS])
def test_bad_input_gives_a_clear_error_and_changes_nothing(
        project, command, args, env_change, file_change, message):
    create_zone()
    if file_change:
        file_change(project)
    env = helios_env()
    if env_change:
        env = env_change(env)
    before = files_of(project / "deploy")

    extra = ["--skip-host"] if command == "aws_provision" else []
    extra += ["--no-input"] if command == "aws_configure" else []
    result = run_manage(project, command, SETTINGS, *extra, *args, env=env, timeout=120)

    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "CommandError: " in result.stderr or "error: argument" in result.stderr
    assert files_of(project / "deploy") == before
    assert inventory() == NOTHING


def test_impostor_and_unreachable_hosts_are_refused_before_anything_happens(
        project, sshd, sshd_new_host_key):
    # The real server's fingerprint is pinned; another server answers on that address.
    deploy = project / "deploy"
    before = files_of(deploy)
    common = ["aws_provision", SETTINGS, "--skip-aws", "--host", "127.0.0.1",
              "--ssh-key", str(sshd.client_key)]
    impostor = run_manage(
        project, *common, "--ssh-port", str(sshd_new_host_key.port),
        "--trust-host-key", sshd.host_key_fingerprint, timeout=120)
    assert impostor.returncode != 0
    assert sshd_new_host_key.host_key_fingerprint in impostor.stderr
    assert "CommandError" in impostor.stderr and "Traceback" not in impostor.stderr

    closed = rig.free_port()
    unreachable = run_manage(
        project, *common, "--ssh-port", str(closed), "--trust-host-key",
        sshd.host_key_fingerprint, timeout=180)
    assert unreachable.returncode != 0
    assert f"127.0.0.1:{closed}" in unreachable.stderr or "reach" in unreachable.stderr
    assert "CommandError" in unreachable.stderr and "Traceback" not in unreachable.stderr
    assert files_of(deploy) == before


# ---------------------------------------------------------------------------- exits


@contextlib.contextmanager
def silent_server():
    """A TCP port that accepts connections and never answers: a run that reaches it
    waits there, so a test knows where the run is when the connection arrives."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(90)
        yield server


def _read_until(fd, text, timeout=90):
    """What the terminal showed up to ``text`` (or to its end when ``text`` is None)."""
    seen, deadline = b"", time.monotonic() + timeout
    while text is None or text.encode() not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {text!r} within {timeout} s; saw {seen[-500:]!r}"
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the other side closed: the process ended
            chunk = b""
        if not chunk:
            assert text is None, f"ended before {text!r}; saw {seen[-500:]!r}"
            break
        seen += chunk
    return seen.decode(errors="replace")


def interrupt(project, args, env=None, prompt=None, server=None):
    """Start manage.py ARGS; once it waits at ``prompt`` (on a pseudo-terminal) or has
    connected to ``server``, send SIGINT. Returns (status, what it printed after that,
    seconds to exit)."""
    terminal = pty.openpty() if prompt else None
    process = subprocess.Popen(
        [sys.executable, "manage.py", *args], cwd=project, env=env or helios_env(),
        stdin=terminal[1] if terminal else subprocess.DEVNULL,
        stdout=terminal[1] if terminal else subprocess.DEVNULL,
        stderr=terminal[1] if terminal else subprocess.PIPE, text=True)
    try:
        if terminal:
            os.close(terminal[1])
            _read_until(terminal[0], prompt)
            # Python checks for signals only once its read() of the terminal has begun:
            # a Ctrl-C in the instant between the prompt and that read would wait for input.
            time.sleep(0.5)
        else:
            connection, _ = server.accept()
            connection.close()
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        if terminal:
            printed = _read_until(terminal[0], None, timeout=60)
            process.wait(timeout=60)
        else:
            printed = process.communicate(timeout=60)[1]
        return process.returncode, printed, time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
        if terminal:
            os.close(terminal[0])


def _silent_aws(env, server):
    return {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.getsockname()[1]}"}


# (phase, arguments, on a terminal waiting at this prompt / else at a silent AWS or
#  SSH endpoint, the line that must say what was interrupted)
INTERRUPTS = [
    ("preflight", ["aws_provision", SETTINGS, "--skip-host"], "aws", None,
     "Interrupted during the check of the deployment against AWS, before any change. "
     "Nothing was changed"),
    ("plan", ["aws_provision", SETTINGS, "--plan"], "aws", None,
     "Interrupted during the plan (--plan). Nothing was changed."),
    ("destroy-reading", ["aws_provision", SETTINGS, "--destroy", "--no-input"], "aws", None,
     "Interrupted during the reading of what the deployment has in AWS. Nothing was deleted"),
    ("destroy-prompt", ["aws_provision", SETTINGS, "--destroy"], None,
     "to destroy it", "Interrupted during the --destroy confirmation. Nothing was destroyed."),
    ("configure-prompt", ["aws_configure", SETTINGS, "--output", "fresh"], None,
     "Public host name", "Interrupted during the question for --domain. Nothing was written"),
    ("host-half", ["aws_provision", SETTINGS, "--skip-aws", "--host", "127.0.0.1",
                   "--trust-host-key", "SHA256:" + "A" * 43, "--ssh-port"], "ssh", None,
     "Interrupted during step 1 (host: ssh). Run the same command again: it resumes"),
    ("aws_check", ["aws_check", SETTINGS, "--only", "site", "--address"], "site", None,
     "Interrupted during the checks. Nothing was changed; run aws_check again."),
]


@pytest.mark.parametrize("phase,args,silent,prompt,line", INTERRUPTS,
                         ids=[row[0] for row in INTERRUPTS])
def test_ctrl_c_anywhere_ends_with_one_line_and_status_130(
        project, phase, args, silent, prompt, line):
    if phase == "destroy-prompt":  # there must be something to destroy
        create_zone()
        run(project)
    deploy = project / "deploy"
    before = files_of(deploy)
    with silent_server() as server:
        env = helios_env()
        port = str(server.getsockname()[1])
        if silent == "aws":
            env = _silent_aws(env, server)
        elif silent == "ssh":
            args = [*args, port]
        elif silent == "site":
            args = [*args, f"127.0.0.1:{port}"]
        status, stderr, seconds = interrupt(project, args, env, prompt,
                                            server if silent else None)
    assert status == 130, stderr
    assert "Traceback" not in stderr and "Exception" not in stderr, stderr
    said = [text for text in stderr.splitlines() if "Interrupted" in text]
    assert len(said) == 1 and line in said[0], stderr
    assert seconds < 10  # no thread holds the exit until its own timeout
    assert files_of(deploy) == before
    assert not (project / "fresh").exists() or not any((project / "fresh").iterdir())


def test_ctrl_c_in_the_destroy_loop_says_to_run_it_again_which_finishes(project):
    create_zone()
    run(project)
    # No server answers SSH: the election freeze lets --destroy through on purpose, with
    # its audit record in the bucket (whose policy moto misjudges: see forced()).
    s3 = boto3.client("s3")
    for bucket in s3.list_buckets()["Buckets"]:
        s3.delete_bucket_policy(Bucket=bucket["Name"])
    process = subprocess.Popen(
        [sys.executable, "manage.py", "aws_provision", SETTINGS, "--destroy", "--no-input",
         "--no-snapshot", "--no-backup", *FORCED], cwd=project, env=helios_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deleting = False
    for text in process.stdout:
        if deleting:
            break  # the first resource the loop deleted; it goes on with the next
        deleting = text.startswith("deleting what deployment")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert ("Interrupted during the teardown (--destroy). Some resources may be deleted "
            "already: run --destroy again") in stderr
    assert inventory() != NOTHING
    again = forced(project, "--destroy", "--no-input", "--no-snapshot", "--no-backup",
                   "--delete-backups", "helios")
    assert "Nothing tagged helios-aws:deployment=" in again.stdout
    assert inventory() == NOTHING


def test_a_run_killed_by_a_timeout_still_shows_every_step_it_finished(project):
    create_zone()
    with silent_server() as server:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "aws_provision", SETTINGS, "--host", "127.0.0.1",
             "--ssh-port", str(server.getsockname()[1]), "--trust-host-key",
             "SHA256:" + "A" * 43], cwd=project, stdout=subprocess.PIPE,
            # Python buffers a pipe unless told otherwise; CI machines do not tell it.
            env={k: v for k, v in helios_env().items() if k != "PYTHONUNBUFFERED"},
            stderr=subprocess.STDOUT, text=True)
        server.accept()  # the AWS half is done; the host half waits for SSH
        process.kill()  # as a CI timeout does: no chance to flush anything
        printed = process.communicate(timeout=60)[0]
    # Each step's outcome line ("[ n/N] step: outcome (T s)"), after its start line.
    finished = [int(n) for n, total in re.findall(r"^\[\s*(\d+)/(\d+)\] .+: \w+ \([\d.]+s\)$",
                                                  printed, re.M)]
    assert finished == list(range(1, len(finished) + 1)) and len(finished) >= 10, printed
    assert inventory() == ONE_OF_EACH


# ---------------------------------------------------------------------------- posture


def test_aws_posture_of_the_deployment(project):
    create_zone()
    run(project)
    ec2, iam = boto3.client("ec2"), boto3.client("iam")
    group = ec2.describe_security_groups(Filters=TAGGED)["SecurityGroups"][0]
    opened = set()
    for rule in group["IpPermissions"]:
        for ip_range in rule.get("IpRanges", []):
            opened.add((rule["FromPort"], rule["ToPort"], ip_range["CidrIp"]))
        for ip_range in rule.get("Ipv6Ranges", []):
            opened.add((rule["FromPort"], rule["ToPort"], ip_range["CidrIpv6"]))
    assert opened == {(22, 22, CIDR), (80, 80, "0.0.0.0/0"), (80, 80, "::/0"),
                      (443, 443, "0.0.0.0/0"), (443, 443, "::/0")}

    instance = ec2.describe_instances(Filters=TAGGED + LIVE)["Reservations"][0]["Instances"][0]
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    volume_ids = [m["Ebs"]["VolumeId"] for m in instance["BlockDeviceMappings"]]
    volumes = ec2.describe_volumes(VolumeIds=volume_ids)["Volumes"]
    assert volumes and all(v["Encrypted"] for v in volumes)
    assert {v["VolumeType"] for v in volumes} == {"gp3"}

    role = iam.list_roles()["Roles"][0]["RoleName"]
    statements = []
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        statements += iam.get_role_policy(RoleName=role, PolicyName=name)[
            "PolicyDocument"]["Statement"]
    assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []
    actions = {a for s in statements if s["Effect"] == "Allow" for a in
               ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    denied = {a for s in statements if s["Effect"] == "Deny" for a in
              ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    # Never delete, shorten or lift the backups' protection (an explicit Deny).
    assert {"s3:DeleteObjectVersion", "s3:BypassGovernanceRetention",
            "s3:PutBucketPolicy", "s3:PutLifecycleConfiguration"} <= denied
    # Send mail as the deployment (reading the sending rate, the one action on "*");
    # write and read back its backups.
    assert actions == {"ses:SendRawEmail", "ses:GetSendQuota", "s3:PutObject",
                       "s3:AbortMultipartUpload", "s3:GetObject", "s3:GetObjectVersion",
                       "s3:ListBucket"}
    resources = {r for s in statements if s["Effect"] == "Allow" for r in
                 ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])}
    bucket = boto3.client("s3").list_buckets()["Buckets"][0]["Name"]
    assert resources and all((r.startswith("arn:aws:ses:") and ":identity/" in r)
                             or r == "*" or r in (f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/helios/*")
                             for r in resources)


def _handshake(port, ca, **context_settings):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(ca))
    for name, value in context_settings.items():
        if name == "ciphers":
            context.set_ciphers(value)
        else:
            setattr(context, name, value)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            return tls.version(), tls.cipher()[0]


# Offering TLS 1.0 and 1.1 is the point here: Python warns that they are deprecated.
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_policy_of_the_generated_site(tmp_path, make_nginx, local_ca):
    http_port, https_port = rig.free_port(), rig.free_port()
    project, prefix = prefixed(tmp_path, http_port, https_port)
    cert = install_certificate(prefix, local_ca)
    make_nginx(project / "deploy/nginx/helios-https.conf").start(ports=[https_port])

    version, _ = _handshake(https_port, cert.ca)
    assert version == "TLSv1.3"
    version, cipher = _handshake(https_port, cert.ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2" and ("GCM" in cipher or "CHACHA20" in cipher)
    # The client allows these (security level 0); the server must refuse them.
    obsolete = [
        {"maximum_version": ssl.TLSVersion.TLSv1_1, "minimum_version": ssl.TLSVersion.TLSv1,
         "ciphers": "DEFAULT:@SECLEVEL=0"},
        {"maximum_version": ssl.TLSVersion.TLSv1_2, "ciphers": "AES128-SHA:AES256-SHA:@SECLEVEL=0"},
        {"maximum_version": ssl.TLSVersion.TLSv1_2, "ciphers": "ECDHE-RSA-AES128-SHA:@SECLEVEL=0"},
        {"maximum_version": ssl.TLSVersion.TLSv1_2, "ciphers": "AES128-SHA256:@SECLEVEL=0"},
    ]
    for settings in obsolete:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            _handshake(https_port, cert.ca, **settings)
