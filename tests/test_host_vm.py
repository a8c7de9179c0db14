"""End to end: the host half turns a bare Debian 13 VM (systemd, under qemu) into a
serving Helios, with a certificate from pebble running on this machine.

The first run is killed (SIGKILL) twice at random moments, once while the packages go in
(apt and dpkg on the server are killed too, as a reboot would) and once while the release
installs, then run to the end: it must finish the job with nothing duplicated,
half-written or rotated.

The commands are run as an operator runs them: ``manage.py aws_configure`` then
``manage.py aws_provision --skip-aws`` in a copy of the fixture project. Then the site
answers over HTTPS through the forwarded port (SNI and Host = the domain, the chain
verified against pebble's root), HTTP redirects, the Celery worker answers a ping, every
unit is active; a second run changes nothing; a broken release leaves the previous one
serving.

Software emulation is slow: the first run takes 9-15 minutes on two cores, most of it
apt and compiling python-ldap. Run alone with ``pytest -m vm tests/test_host_vm.py``.
"""

import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import socket
import ssl
import sys
import time
import types
from pathlib import Path

import boto3
import pytest
import rig
from fixtures import helios_env, make_fixture_project, run_manage
from load import SteadyLoad
from test_backup import provision_bucket

import helios_aws
from helios_aws import envfile
from vm import debian_vm  # noqa: F401  (a fixture)


DOMAIN = "vote.helios-vm.test"
LIVENESS = "/helios/elections/params"
SETTINGS = "--settings=helios_aws.settings_overrides.production"
FIRST_RUN_TIMEOUT = 3600
# The first run provisions a bare guest under software emulation (9-15 min here): the
# module's first test carries that set-up, so the per-test timeout is raised for it.
pytestmark = [pytest.mark.vm, pytest.mark.timeout(FIRST_RUN_TIMEOUT + 600)]
# Where the first run is killed: (the step whose completion starts the clock, seconds
# after it, drawn at random from this range, what is killed on the server at the same
# moment). Set HELIOS_AWS_KILL_SEED to vary the moments.
KILLS = (
    # apt and dpkg at work; they die too, as in a reboot: dpkg is left half-way
    ("host: trusted CA certificates", (45, 240), "apt-get|dpkg"),
    # the release uploading or installing; on the server it runs on to its end
    ("host: .env", (5, 60), None),
)
KILL_SEED = int(os.environ.get("HELIOS_AWS_KILL_SEED", "20261125"))
# Awkward but legal .env values: systemd on the guest must read them as the overlay does.
AWKWARD_FROM_NAME = "Helios  $HOME #1 100%i O'Brien & Co"
AWKWARD_ENV_LINES = (
    "HAND_EDITED_DOUBLE=\"it's \\\"quoted\\\" \\\\ $HOME `x` \\n\"\n"
    "HAND_EDITED_SINGLE='a  b # c ; d % e \\ f'\n"
    "HAND_EDITED_BARE=100%#x$y;z\n"
    "# a hand-written comment; then an empty value\nHAND_EDITED_EMPTY=\n"
)


@pytest.fixture(scope="module")
def pebble_for_guest(tmp_path_factory, local_ca):
    server = rig.GuestPebble(tmp_path_factory.mktemp("pebble-guest"), local_ca)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ca_bundle(tmp_path_factory, pebble_for_guest):
    return rig.guest_trust_bundle(tmp_path_factory.mktemp("trust") / "bundle.pem",
                                  pebble_for_guest)


@pytest.fixture(scope="module")
def helios_aws_snapshot(tmp_path_factory):
    """helios-aws as it is when the module starts, first on the commands' path: the host
    gets this copy as its wheel on every run, so the runs compare like with like even if
    the working tree changes during the long test."""
    root = tmp_path_factory.mktemp("helios-aws-snapshot")
    shutil.copytree(Path(helios_aws.__file__).parent, root / "helios_aws",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


class Deployment:
    """The fixture project, configured for the VM, and the way to provision it."""

    def __init__(self, vm, project, pebble, ca_bundle, snapshot):
        self.vm, self.project, self.pebble, self.ca_bundle = vm, project, pebble, ca_bundle
        self.env = helios_env(PYTHONPATH=str(snapshot))

    def manage(self, *args, timeout=600):
        return run_manage(self.project, *args, SETTINGS, env=self.env, timeout=timeout)

    def provision_args(self):
        return ("aws_provision", "--skip-aws", "--no-input", "--verbosity", "2",
                "--host", self.vm.host, "--ssh-port", str(self.vm.ssh_port),
                "--ssh-key", str(self.vm.key_path),
                "--trust-host-key", self.vm.host_key_fingerprint,
                "--server", self.pebble.directory_url, "--ca-bundle", str(self.ca_bundle))

    def provision(self, timeout=FIRST_RUN_TIMEOUT):
        started = time.monotonic()
        result = self.manage(*self.provision_args(), timeout=timeout)
        result.seconds = time.monotonic() - started
        return result

    def provision_killed(self, after_step, delay, on_host=None):
        """Start aws_provision and SIGKILL it ``delay`` seconds after ``after_step`` has
        finished (as its log says), and the server's processes named ``on_host`` (a
        pkill pattern) with it. The last step it finished before it died, or None when
        the run ended (or failed) first."""
        log = self.project / "deploy" / "provision.log"
        offset = log.stat().st_size if log.exists() else 0
        process = subprocess.Popen(
            [sys.executable, "manage.py", *self.provision_args(), SETTINGS],
            cwd=self.project, env=self.env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + FIRST_RUN_TIMEOUT
            while not any(line.startswith(f"{after_step}: ")
                          for line in self.completions(offset)):
                if process.poll() is not None or time.monotonic() > deadline:
                    return None
                time.sleep(1)
            time.sleep(delay)
            if process.poll() is not None:
                return None
            process.send_signal(signal.SIGKILL)
            if on_host:
                self.guest(f"sudo pkill -KILL -x '{on_host}'", check=False)
                # For the record: whether dpkg was caught half-way (the next run finishes
                # its work first) or between two operations.
                pending = self.guest("ls -A /var/lib/dpkg/updates | wc -l", check=False)
                print(f"dpkg operations left pending on the server: {pending.stdout.strip()}")
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        done = self.completions(offset)
        return done[-1].rsplit(": ", 1)[0] if done else "the start"

    def completions(self, offset):
        """Step completions ("host: STEP: OUTCOME in N s") logged since ``offset``."""
        try:
            with open(self.project / "deploy" / "provision.log", encoding="utf-8") as log:
                log.seek(offset)
                # "DATE TIME LEVEL MESSAGE"
                lines = [line.split(" ", 3)[-1].strip() for line in log
                         if line.count(" ") >= 3]
        except FileNotFoundError:
            return []
        return [line for line in lines
                if line.startswith("host: ") and line.rsplit(" in ", 1)[-1][:1].isdigit()]

    def guest(self, command, check=True, timeout=300):
        return self.vm.run(command, check=check, timeout=timeout)


def output(result):
    return f"exit {result.returncode}\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"


@pytest.fixture(scope="module")
def deployment(debian_vm, tmp_path_factory, pebble_for_guest, ca_bundle,  # noqa: F811
               helios_aws_snapshot):
    project = make_fixture_project(tmp_path_factory.mktemp("vm-project"))
    deployed = Deployment(debian_vm, project, pebble_for_guest, ca_bundle, helios_aws_snapshot)
    # No --os: the default (Debian 13) is the OS this test proves end to end.
    configured = deployed.manage("aws_configure", "--domain", DOMAIN,
                                 "--email", "elections@helios-vm.test",
                                 "--from-name", AWKWARD_FROM_NAME,
                                 "--auth-systems", "password", "--no-input")
    assert configured.returncode == 0, output(configured)
    with open(project / "deploy" / ".env", "a", encoding="utf-8") as env:
        env.write(AWKWARD_ENV_LINES)
    deployed.secrets = secret_digests((project / "deploy" / ".env").read_text())

    rng = random.Random(KILL_SEED)
    started = time.monotonic()
    deployed.killed_during = []
    for after_step, window, on_host in KILLS:
        delay = round(rng.uniform(*window), 1)
        running = deployed.provision_killed(after_step, delay, on_host)
        print(f"SIGKILL {delay} s after {after_step!r} (seed {KILL_SEED}"
              f"{', and on the server ' + on_host if on_host else ''}): "
              f"{'killed in the step after ' + running if running else 'the run ended first'}")
        deployed.killed_during.append(running)
    first = deployed.provision()
    print(f"first run, kills included: {time.monotonic() - started:.0f} s")
    assert first.returncode == 0, output(first)
    deployed.first = first
    return deployed


def secret_digests(env_text):
    """The generated secrets' digests: compared without ever showing a value."""
    values = envfile.parse(env_text)
    return {key: hashlib.sha256(values[key].encode()).hexdigest()
            for key in (*envfile.GENERATED_SECRETS, "DATABASE_URL") if key in values}


def https_get(vm, path, root_pem, port=None):
    """GET https://DOMAIN/path through the forwarded port: SNI and Host are the domain
    and the certificate must chain to pebble's root and name the domain."""
    context = ssl.create_default_context(cadata=root_pem)
    with socket.create_connection((vm.host, port or vm.https_port), timeout=60) as raw:
        with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n"
                        .encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def http_get(vm, path):
    with socket.create_connection((vm.host, vm.http_port), timeout=60) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n"
                     .encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    lines = data.partition(b"\r\n\r\n")[0].decode().split("\r\n")
    return int(lines[0].split()[1]), dict(line.split(": ", 1) for line in lines[1:])


def as_helios(command):
    """A command as the service user, in the serving release, with the deployment's env."""
    return (f"cd /srv/helios/current && sudo runuser -u helios -- env "
            "HELIOS_ENV_FILE=/srv/helios/config/.env "
            f"DJANGO_SETTINGS_MODULE=helios_aws.settings_overrides.production {command}")


def test_first_run_provisions_every_step(deployment):
    text = deployment.first.stdout
    for step in ("packages", "postgresql", "broker", "release", "migrate", "systemd units",
                 "certificate", "certificate renewal"):
        assert f"host: {step}: " in text
    assert "host: certificate renewal: updated" in text
    assert "certbot renew --dry-run" in text
    assert "-> 200" in text or "host: liveness: unchanged" in text
    # The minutes-long steps said they were alive, the packages with apt's own counts (the
    # log keeps the killed runs' lines too).
    log = (deployment.project / "deploy" / "provision.log").read_text()
    assert re.search(r"host: packages: still running after \S+; (downloading|installing|"
                     r"configuring) \d+/\d+ packages", log)
    # The release said so too, in the run that installed it (if that took long enough:
    # after the kill, the server may have finished the install on its own).
    if any(float(s) > 35 for s in re.findall(r"host: release: created in ([\d.]+)s", log)):
        assert "host: release: still running after " in log


def test_runs_killed_mid_way_leave_nothing_duplicated_half_written_or_rotated(deployment):
    assert any(deployment.killed_during), "no run was killed: the kills came too late"
    deploy = deployment.project / "deploy"
    assert not [p.name for p in deploy.rglob("*") if p.name.endswith(".tmp")]
    local = secret_digests((deploy / ".env").read_text())
    assert local == deployment.secrets
    on_host = deployment.guest("sudo cat /srv/helios/config/.env").stdout
    assert secret_digests(on_host) == local
    # One release, installed and serving; nothing half-written beside the real files.
    releases = deployment.guest("ls /srv/helios/releases").stdout.split()
    current = deployment.guest("readlink /srv/helios/current").stdout.strip()
    assert releases == [current.split("/")[-1]]
    assert deployment.guest(f"test -f /var/lib/helios-aws/releases/{releases[0]}/installed "
                            "&& echo ok", check=False).stdout.strip() == "ok"
    half_written = deployment.guest("sudo find /etc /srv /var/lib/helios "
                                    "-name '*.helios-aws-new'").stdout.split()
    uploads_left = deployment.guest("sudo find /tmp -maxdepth 1 -name 'helios-aws.*'"
                                    ).stdout.split()
    assert (half_written, uploads_left) == ([], [])
    assert deployment.guest("sudo dpkg --audit").stdout.strip() == ""
    counts = deployment.guest(
        "cd / && sudo runuser -u postgres -- psql -XAtc \"SELECT "
        "(SELECT count(*) FROM pg_roles WHERE rolname = 'helios'), "
        "(SELECT count(*) FROM pg_database WHERE datname = 'helios')\"").stdout.strip()
    assert counts == "1|1"


def test_the_site_answers_over_https_with_the_pebble_certificate(deployment):
    root = deployment.pebble.issuing_root()
    status, headers, body = https_get(deployment.vm, "/helios/elections/params", root)
    assert status == 200, body[:500]
    assert json.loads(body)
    assert headers.get("Strict-Transport-Security")
    status, _, _ = https_get(deployment.vm, "/", root)
    assert status == 200
    status, headers, _ = https_get(deployment.vm, "/static/logo.png", root)
    assert (status, headers["Content-Type"]) == (200, "image/png")


def test_http_redirects_to_https(deployment):
    status, headers = http_get(deployment.vm, "/helios/elections/params?x=1")
    assert status == 301
    assert headers["Location"] == f"https://{DOMAIN}/helios/elections/params?x=1"


def test_other_names_and_the_bare_address_get_no_site(deployment):
    """Debian's default site ("Welcome to nginx!") is disabled; the site's own default
    server closes the connection for any name it does not serve."""
    assert deployment.guest("ls /etc/nginx/sites-enabled/").stdout.split() == []
    for host in ("10.0.2.15", "unknown.example.org"):
        with socket.create_connection((deployment.vm.host, deployment.vm.http_port),
                                      timeout=60) as conn:
            conn.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                         .encode())
            try:
                answer = conn.recv(65536)
            except ConnectionResetError:
                answer = b""
        assert answer == b"", (host, answer[:300])


def test_every_unit_is_enabled_and_active(deployment):
    units = ["gunicorn.socket", "gunicorn.service", "helios-celery.service", "nginx.service",
             "postgresql.service", "rabbitmq-server.service", "helios-certbot-renew.timer"]
    active = deployment.guest(f"systemctl is-active {' '.join(units)}", check=False)
    assert active.stdout.split() == ["active"] * len(units), active.stdout
    enabled = deployment.guest(f"systemctl is-enabled {' '.join(units)}", check=False)
    assert enabled.stdout.split() == ["enabled"] * len(units), enabled.stdout
    assert deployment.guest("systemctl is-enabled certbot.timer",
                            check=False).stdout.strip() == "disabled"


def test_the_celery_worker_answers_a_ping(deployment):
    # Under emulation RabbitMQ can miss the AMQP client's 4 s handshake timeout: the
    # client gets a few tries, the worker must answer.
    for _ in range(5):
        result = deployment.guest(as_helios(".venv/bin/celery --app helios inspect ping "
                                            "--timeout 30"), check=False, timeout=240)
        if "pong" in result.stdout:
            break
        time.sleep(10)
    assert "pong" in result.stdout, result.stdout + result.stderr[-3000:]


def test_debian_13_nginx_reads_the_site_without_a_deprecation_warning(deployment):
    """nginx 1.26 warns about `listen ... http2` at every test and start: the site says
    `http2 on;` instead."""
    checked = deployment.guest("sudo nginx -t", check=False)
    assert checked.returncode == 0, output(checked)
    assert "deprecated" not in checked.stdout + checked.stderr, output(checked)
    assert "\n    http2 on;\n" in deployment.guest("cat /etc/nginx/conf.d/helios.conf").stdout


def test_nothing_but_ssh_and_nginx_listens_beyond_loopback(deployment):
    listening = deployment.guest("sudo ss -Hltnp").stdout.splitlines()
    public = [line for line in listening
              if not line.split()[3].startswith(("127.", "[::1]"))]
    assert public and all(("sshd" in line or "nginx" in line) for line in public), public


def test_the_install_ran_as_the_service_user_and_the_code_is_root_s(deployment):
    """The install filled the service user's download cache (had root run it, the files
    would be root's), and the installed release, virtualenv included, is root's: the app
    cannot change the code it runs."""
    cache = deployment.guest("sudo find /var/cache/helios-aws -mindepth 2 -printf '%u\\n' "
                             "| sort -u").stdout.split()
    roots = deployment.guest("sudo find /var/cache/helios-aws -mindepth 2 -user root "
                             "| head -n 20").stdout
    assert cache == ["helios"], roots
    code = deployment.guest("sudo find /srv/helios/current/ -printf '%u\\n' | sort -u"
                            ).stdout.split()
    assert code == ["root"]


def test_secrets_are_private_to_the_service_user(deployment):
    stat = deployment.guest("sudo stat -c '%U %a' /srv/helios/config/.env").stdout.split()
    assert stat == ["helios", "600"]
    role = deployment.guest("cd / && sudo runuser -u postgres -- psql -XAtc "
                            "\"SELECT rolsuper FROM pg_roles WHERE rolname = 'helios'\"")
    assert role.stdout.strip() == "f"


def test_helios_does_not_start_without_its_readable_env(deployment):
    env = "/srv/helios/config/.env"
    restart = "sudo systemctl restart gunicorn.service"
    since = deployment.guest("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()

    def journal_says(text, limit=240):
        """The unit's journal since the test began, once it holds ``text`` (gunicorn is
        ready before its workers have loaded Helios: under emulation that takes ~20 s)."""
        deadline = time.monotonic() + limit
        while True:
            said = deployment.guest("sudo journalctl -u gunicorn.service --no-pager "
                                    f"--since {shlex.quote(since)}").stdout
            if text in said or time.monotonic() > deadline:
                return said
            time.sleep(5)

    try:
        # systemd reads EnvironmentFile= as root: the overlay, as the service user, refuses,
        # and gunicorn stops once its workers cannot load Helios.
        deployment.guest(f"sudo chmod 000 {env}")
        deployment.guest(restart, check=False, timeout=120)
        said = journal_says(f"HELIOS_ENV_FILE {env} cannot be read (Permission denied)")
        stopped = journal_says("Worker failed to boot")
        deployment.guest(f"sudo chmod 600 {env} && sudo mv {env} {env}.kept")
        missing = deployment.guest(restart, check=False, timeout=120)
        said_missing = journal_says("Failed to load environment files")
    finally:
        deployment.guest(f"sudo test -e {env} || sudo mv {env}.kept {env}; sudo chmod 600 {env}; "
                         "sudo systemctl reset-failed gunicorn.service; " + restart, timeout=180)

    assert f"HELIOS_ENV_FILE {env} cannot be read (Permission denied)" in said, said[-4000:]
    assert "Worker failed to boot" in stopped, stopped[-4000:]
    assert missing.returncode != 0
    assert "Failed to load environment files" in said_missing, said_missing[-4000:]
    assert deployment.guest("systemctl is-active gunicorn.service").stdout.strip() == "active"


def test_systemd_reads_the_deployed_env_as_the_overlay_does(deployment):
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    python = "/srv/helios/current/.venv/bin/python"
    by_systemd = json.loads(deployment.guest(
        "sudo systemd-run --quiet --wait --pipe --collect "
        f"-p EnvironmentFile=/srv/helios/config/.env {python} -c '{dump}'").stdout)
    overlay = ("import environ, json; E = type('E', (environ.Env,), {'ENVIRON': {}}); "
               "E.read_env('/srv/helios/config/.env'); print(json.dumps(E.ENVIRON))")
    by_overlay = json.loads(deployment.guest(f'sudo {python} -c "{overlay}"').stdout)
    ours = envfile.parse((deployment.project / "deploy" / ".env").read_text())
    assert ours["DEFAULT_FROM_NAME"] == AWKWARD_FROM_NAME
    assert ours["HAND_EDITED_SINGLE"] == "a  b # c ; d % e \\ f"

    def digests(values):  # compared without ever showing a secret
        return {k: hashlib.sha256(values[k].encode()).hexdigest() for k in ours if k in values}

    assert digests(by_overlay) == digests(ours)
    assert digests(by_systemd) == digests(ours)


def test_a_second_run_changes_nothing(deployment):
    again = deployment.provision(timeout=900)
    print(f"no-op run: {again.seconds:.1f} s")
    assert again.returncode == 0, output(again)
    assert "Done: no changes." in again.stdout, output(again)


def serving(deployment):
    return deployment.guest("readlink /srv/helios/current").stdout.strip()


def test_a_new_release_is_switched_to_without_losing_a_request(deployment):
    """While the new release migrates, is switched to and the app restarts, a steady
    stream of requests (12 a second, to / and to the liveness page, through nginx on the
    forwarded port) gets an answer to every request."""
    root = deployment.pebble.issuing_root()
    before = serving(deployment)
    (deployment.project / "server_ui" / "media" / "release-note.txt").write_text("second\n")
    log = deployment.project / "deploy" / "provision.log"
    offset = log.stat().st_size
    process = subprocess.Popen(
        [sys.executable, "manage.py", *deployment.provision_args(), SETTINGS],
        cwd=deployment.project, env=deployment.env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 1800
        while not any(line.startswith("host: release: ")
                      for line in deployment.completions(offset)):
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the release was not installed in 30 min"
            time.sleep(0.5)
        # The release is installed: from here on, migrate, switch and restart.
        with SteadyLoad(deployment.vm.host, lambda path: https_get(
                deployment.vm, path, root)[0], ["/", LIVENESS], rate=12) as load:
            process.wait(timeout=900)
            time.sleep(3)
    finally:
        if process.poll() is None:
            process.kill()
    text = process.stdout.read()
    print(f"zero-downtime switch: {load.summary()}")
    assert process.returncode == 0, text[-6000:]
    assert serving(deployment) != before
    assert load.failures == [], [(a.path, a.status, a.error) for a in load.failures[:10]]
    assert load.offered_rate >= 10 and len(load.answers) >= 10 * 20
    status, _, body = https_get(deployment.vm, "/static/release-note.txt", root)
    assert (status, body) == (200, b"second\n")
    deployment.previous, deployment.newest = before, serving(deployment)


def test_releases_are_listed_and_a_rollback_goes_back_to_the_previous_one(deployment):
    listed = deployment.manage(*deployment.provision_args(), "--releases")
    assert listed.returncode == 0, output(listed)
    rows = [line.split() for line in listed.stdout.splitlines()
            if line.startswith("  2")]
    assert [row[0] for row in rows] == [deployment.newest.split("/")[1],
                                        deployment.previous.split("/")[1]]
    assert rows[0][1] == "serving" and rows[1][1] == "installed"

    planned = deployment.manage(*deployment.provision_args(), "--rollback", "--plan")
    assert planned.returncode == 0, output(planned)
    assert f"current -> {deployment.previous}" in planned.stdout
    assert serving(deployment) == deployment.newest

    started = time.monotonic()
    rolled = deployment.manage(*deployment.provision_args(), "--rollback")
    print(f"--rollback: {time.monotonic() - started:.1f} s")
    assert rolled.returncode == 0, output(rolled)
    assert serving(deployment) == deployment.previous
    root = deployment.pebble.issuing_root()
    assert https_get(deployment.vm, LIVENESS, root)[0] == 200
    assert https_get(deployment.vm, "/static/release-note.txt", root)[0] == 404


def test_a_rollback_past_a_migration_is_refused_naming_it(deployment):
    migrations = deployment.project / "helios" / "migrations"
    latest = max(p.stem for p in migrations.glob("0*.py"))
    (migrations / "0098_ballot_note.py").write_text(
        "from django.db import migrations\n\n\n"
        "class Migration(migrations.Migration):\n"
        f"    dependencies = [('helios', {latest!r})]\n"
        "    operations = [migrations.RunSQL('CREATE TABLE helios_ballot_note (id int)', "
        "'DROP TABLE helios_ballot_note')]\n")
    forward = deployment.provision(timeout=1800)
    assert forward.returncode == 0, output(forward)
    newest = serving(deployment)
    refused = deployment.manage(*deployment.provision_args(), "--rollback")
    assert refused.returncode != 0
    assert "helios.0098_ballot_note" in refused.stderr, output(refused)
    assert serving(deployment) == newest


def test_backup_by_the_timer_drill_restore_and_a_corrupted_backup(deployment, aws_env):
    """The guest reaches the moto server at 10.0.2.2 (qemu's address for this machine).
    moto treats the TLS-only bucket policy as a Deny of every object request (see
    test_backup.py), so it goes; the guest has no instance role, so test keys go into the
    .env, as a hand edit aws_configure keeps."""
    bucket, _ = provision_bucket(types.SimpleNamespace(deploy=deployment.project / "deploy"))
    s3 = boto3.client("s3")
    s3.delete_bucket_policy(Bucket=bucket)
    port = aws_env.rsplit(":", 1)[1]
    with open(deployment.project / "deploy" / ".env", "a") as env:
        env.write(f"AWS_ENDPOINT_URL=http://10.0.2.2:{port}\nAWS_ACCESS_KEY_ID=testing\n"
                  "AWS_SECRET_ACCESS_KEY=testing\n")
    provisioned = deployment.provision(timeout=1800)
    assert provisioned.returncode == 0, output(provisioned)
    assert "host: nightly backup: created" in provisioned.stdout, output(provisioned)
    psql = "cd / && sudo runuser -u helios -- psql -XAtq -d helios -c "
    deployment.guest(psql + "\"INSERT INTO helios_election (uuid, short_name, name, featured_p, "
                     "created_at) SELECT gen_random_uuid(), 'e' || i, 'E' || i, false, now() "
                     "FROM generate_series(1, 2) i; INSERT INTO helios_voter (election_id, "
                     "uuid, voter_login_id) SELECT (SELECT min(id) FROM helios_election), "
                     "md5(i::text), 'v' || i FROM generate_series(1, 2000) i; INSERT INTO "
                     "helios_castvote (voter_id, vote, vote_hash, cast_at) SELECT id, "
                     "md5(id::text), md5(id::text), now() FROM helios_voter\"")

    # An uploaded file where Helios really keeps them on the server (MEDIA_ROOT is the
    # shared directory, not Helios's own ROOT_PATH + "media/": releases/<id>media/).
    deployment.guest("sudo runuser -u helios -- sh -c 'mkdir -p /srv/helios/shared/media/"
                     "voters && echo password,v1,v1@example.org,V1 > "
                     "/srv/helios/shared/media/voters/e1.csv'")

    # The nightly backup waits for the deployment lock (held here as a restore would hold
    # it), then runs as the service user.
    deployment.guest("sudo systemd-run --quiet --unit=hold-the-lock "
                     "flock /run/helios-aws.lock sleep 25")
    deployment.guest("sudo systemctl start --no-block helios-backup.service")
    time.sleep(10)
    waiting = deployment.guest("systemctl is-active helios-backup.service; "
                               "pgrep -u root -f 'flock --wait 7200 /run/helios-aws.lock' "
                               ">/dev/null && echo flock-waits", check=False).stdout.split()
    assert waiting == ["activating", "flock-waits"], waiting
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="helios/daily/")
    ran_as = deployment.guest(
        "for i in $(seq 120); do pgrep -u helios -f 'manage.py aws_backup --here' "
        ">/dev/null && { echo helios; break; }; sleep 0.5; done", check=False).stdout.strip()
    assert ran_as == "helios"
    started = time.monotonic()
    result = deployment.guest(
        "while [ \"$(systemctl is-active helios-backup.service)\" = activating ]; do "
        "sleep 1; done; systemctl show -p Result --value helios-backup.service",
        timeout=900).stdout.strip()
    assert result == "success", deployment.guest(
        "sudo journalctl -u helios-backup.service --no-pager | tail -30", check=False).stdout
    print(f"backup by the timer's service: {time.monotonic() - started:.0f} s after the lock")
    manifests = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="helios/daily/")
                 ["Contents"] if o["Key"].endswith("/manifest.json")]
    assert len(manifests) == 1
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=manifests[0])["Body"].read())
    assert manifest["row_counts"]["helios_castvote"] == 2000
    assert manifest["media"]["files"] == 1
    folder = manifest["folder"]
    ssh = ("--host", deployment.vm.host, "--ssh-port", str(deployment.vm.ssh_port),
           "--ssh-key", str(deployment.vm.key_path),
           "--trust-host-key", deployment.vm.host_key_fingerprint)

    # What the service user could plant before root's drill and restore (docs/root.md):
    # lines in its .env that would steer a process root starts, programs on the PATH
    # they name, and a link in place of the media directory, to root's files.
    evil = "/srv/helios/shared/evil"
    programs = "".join(
        f"printf '#!/bin/sh\\n: > {evil}/ran-{name}-$(id -u)-$$\\n"
        f"PATH=/usr/bin:/bin exec {name} \"$@\"\\n' > {evil}/{name} && "
        f"chmod 755 {evil}/{name} && "
        for name in ("psql", "pg_restore", "runuser", "systemctl", "tar", "cat", "mv", "env",
                     "sh", "python3"))
    deployment.guest("cd / && sudo runuser -u helios -- sh -c " + shlex.quote(
        f"mkdir -p {evil} && {programs}"
        f"printf 'import os\\nopen(f\"{evil}/python-{{os.geteuid()}}-{{os.getpid()}}\", "
        f"\"w\")\\n' > {evil}/sitecustomize.py && "
        f"printf 'PATH={evil}:/usr/bin:/bin\\nPYTHONPATH={evil}\\nBASH_ENV={evil}/sh\\n' "
        ">> /srv/helios/config/.env && "
        "mv /srv/helios/shared/media /srv/helios/shared/media-real && "
        "ln -s /var/lib/helios-canary /srv/helios/shared/media"))
    deployment.guest("sudo mkdir -m 700 -p /var/lib/helios-canary && "
                     "echo 'root ALL=(ALL) ALL' | sudo tee /var/lib/helios-canary/sudoers "
                     ">/dev/null")
    canary = "sudo find /var/lib/helios-canary -printf '%p %u %m %s\\n' | sort; " \
             "sudo sha256sum /var/lib/helios-canary/sudoers"
    outside = deployment.guest(canary).stdout

    started = time.monotonic()
    drill = deployment.manage("aws_restore", "--drill", *ssh, timeout=900)
    print(f"restore drill: {time.monotonic() - started:.0f} s")
    assert drill.returncode == 0, output(drill)
    assert f"drill {folder}: passed" in drill.stdout

    deployment.guest(psql + "\"DELETE FROM helios_castvote WHERE id % 2 = 0\"")
    started = time.monotonic()
    restored = deployment.manage("aws_restore", "--backup", folder, "--into-production",
                                 "--yes", "--no-input", *ssh, timeout=1800)
    print(f"restore into production: {time.monotonic() - started:.0f} s")
    assert restored.returncode == 0, output(restored)
    assert deployment.guest(psql + "'SELECT count(*) FROM helios_castvote'"
                            ).stdout.strip() == "2000"
    assert deployment.guest("sudo cat /srv/helios/shared/media/voters/e1.csv").stdout \
        == "password,v1,v1@example.org,V1\n"
    # No stray directory where Helios's own MEDIA_ROOT would have been.
    assert deployment.guest("ls -d /srv/helios/releases/*media /srv/helios/currentmedia",
                            check=False).stdout.strip() == ""
    status, _, _ = https_get(deployment.vm, "/", deployment.pebble.issuing_root())
    assert status == 200
    assert deployment.guest("systemctl is-active gunicorn.service helios-celery.service"
                            ).stdout.split() == ["active", "active"]
    # Nothing planted ran as root; root's files are as they were; the restored media
    # directory is the service user's, the planted link kept aside untouched.
    ran = deployment.guest(f"sudo ls {evil}").stdout.split()
    assert [name for name in ran if name.split("-")[-2:-1] == ["0"]] == []
    assert deployment.guest(canary).stdout == outside
    assert deployment.guest("sudo stat -c '%U %F' /srv/helios/shared/media"
                            ).stdout.strip() == "helios directory"
    assert deployment.guest("sudo find /srv/helios/shared -maxdepth 1 "
                            "-name 'media.previous-*' -type l").stdout.strip()
    assert deployment.guest("sudo cat /var/lib/helios-aws/restore.json").stdout.count(
        '"phase": "done"') == 1

    data = bytearray(s3.get_object(Bucket=bucket, Key=folder + "db.dump")["Body"].read())
    data[len(data) // 2] ^= 0xFF
    # Written over alone, the dump is not read (the manifest names the version it
    # describes): the manifest is made to name the damaged version too.
    version = s3.put_object(Bucket=bucket, Key=folder + "db.dump", Body=bytes(data))[
        "VersionId"]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=folder + "manifest.json")[
        "Body"].read())
    manifest["database"]["version_id"] = version
    s3.put_object(Bucket=bucket, Key=folder + "manifest.json",
                  Body=json.dumps(manifest).encode())
    broken = deployment.manage("aws_restore", "--drill", "--backup", folder, *ssh,
                               timeout=900)
    assert broken.returncode == 1
    assert f"Checksum mismatch for s3://{bucket}/{folder}db.dump" in broken.stderr


def test_a_broken_release_leaves_the_previous_one_serving(deployment):
    before = serving(deployment)
    installed = deployment.guest("ls /srv/helios/releases").stdout.split()
    migrations = deployment.project / "helios" / "migrations"
    latest = max(p.stem for p in migrations.glob("0*.py"))
    (migrations / "0099_broken.py").write_text(
        "from django.db import migrations\n\n\n"
        "def fail(apps, schema_editor):\n"
        "    raise RuntimeError('this release is broken on purpose')\n\n\n"
        "class Migration(migrations.Migration):\n"
        f"    dependencies = [('helios', {latest!r})]\n"
        "    operations = [migrations.RunPython(fail)]\n")
    broken = deployment.provision(timeout=1800)
    print(f"broken release run: {broken.seconds:.0f} s")
    assert broken.returncode != 0
    assert "host: migrate: failed" in broken.stdout, output(broken)
    assert "broken on purpose" in broken.stderr, output(broken)
    assert deployment.guest("readlink /srv/helios/current").stdout.strip() == before
    status, _, _ = https_get(deployment.vm, "/helios/elections/params",
                             deployment.pebble.issuing_root())
    assert status == 200
    releases = deployment.guest("ls /srv/helios/releases").stdout.split()
    # The broken release stays beside the others (the next good run prunes it).
    assert len(releases) == len(installed) + 1 and set(installed) <= set(releases)
