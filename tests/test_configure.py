"""aws_configure on the Helios-like fixture: what it writes, re-runs, and refuses."""

import json
import os
import re
import stat
import subprocess
import sys

import pytest

from fixtures import helios_env, make_fixture_project, make_not_helios_project, run_manage

SETTINGS = "--settings=helios_aws.settings_overrides.production"
BASE = ["--domain", "vote.example.org", "--email", "elections@example.org",
        "--auth-systems", "password,google", "--google-client-id", "gid-123.apps",
        "--ssh-cidr", "203.0.113.7/32", "--no-input"]
GOOGLE_SECRET = "gsecret-Zq8-not-for-logs"
RENDERED = [
    "systemd/gunicorn.socket", "systemd/gunicorn.service", "systemd/helios-celery.service",
    "systemd/helios-certbot-renew.service", "systemd/helios-certbot-renew.timer",
    "systemd/helios-backup.service", "systemd/helios-backup.timer",
    "nginx/helios-http.conf", "nginx/helios-https.conf",
    "systemd/helios-seal.service", "systemd/helios-seal.timer",
]


def configure(project, *args, env=None):
    env = env or helios_env(HELIOS_GOOGLE_CLIENT_SECRET=GOOGLE_SECRET)
    return run_manage(project, "aws_configure", SETTINGS, *args, env=env)


def read_env(path):
    values = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        values[key] = value.strip("'")
    return values


def snapshot(directory):
    """Every file under directory with its content and mode, to prove nothing changed."""
    if not directory.exists():
        return None
    return {str(p.relative_to(directory)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def project(tmp_path):
    return make_fixture_project(tmp_path)


def test_writes_every_file_with_production_values(project):
    result = configure(project, *BASE)
    assert result.returncode == 0, result.stderr
    deploy = project / "deploy"
    for rel in RENDERED:
        assert (deploy / rel).is_file(), rel
    env_path = deploy / ".env"
    assert stat.S_IMODE(env_path.stat().st_mode) == 0o600
    env = read_env(env_path)
    assert env["DEBUG"] == "0" and env["SSL"] == "1" and env["HSTS"] == "1"
    assert env["URL_HOST"] == env["SECURE_URL_HOST"] == "https://vote.example.org"
    assert env["ALLOWED_HOSTS"] == "vote.example.org"
    assert env["EMAIL_USE_AWS"] == "1"
    assert env["DEFAULT_FROM_EMAIL"] == "elections@example.org"
    assert env["CELERY_BROKER_URL"] == "amqp://localhost"  # debian13's broker: the default
    assert env["AUTH_ENABLED_SYSTEMS"] == "password,google"
    assert env["GOOGLE_CLIENT_ID"] == "gid-123.apps"
    assert env["GOOGLE_CLIENT_SECRET"] == GOOGLE_SECRET
    assert env["DJANGO_SETTINGS_MODULE"] == "helios_aws.settings_overrides.production"
    assert len(env["SECRET_KEY"]) >= 50 and len(env["EMAIL_OPTOUT_SECRET"]) >= 50
    assert "DATABASE_URL" not in env  # local PostgreSQL over the socket, peer auth
    # The report names keys, never values.
    assert "SECRET_KEY" in result.stdout
    for secret in (env["SECRET_KEY"], env["EMAIL_OPTOUT_SECRET"], GOOGLE_SECRET):
        assert secret not in result.stdout + result.stderr
    record = json.loads((deploy / "deployment.json").read_text())
    assert record["domain"] == "vote.example.org" and record["ssh_cidr"] == "203.0.113.7/32"
    assert record["os"] == "debian13"
    assert GOOGLE_SECRET not in (deploy / "deployment.json").read_text()
    assert ".env" in (deploy / ".gitignore").read_text().split()


def test_project_config_is_read_from_the_project(project):
    configure(project, *BASE)
    deploy = project / "deploy"
    service = (deploy / "systemd/gunicorn.service").read_text()
    assert "wsgi:application" in service
    assert "EnvironmentFile=/srv/helios/config/.env" in service
    celery = (deploy / "systemd/helios-celery.service").read_text()
    assert "--app helios worker" in celery
    assert "--schedule /var/lib/helios/celerybeat-schedule" in celery
    assert "rabbitmq-server.service" in celery  # debian13's default broker
    site = (deploy / "nginx/helios-https.conf").read_text()
    for url, path in [("/static/auth/", "helios_auth/media/"), ("/static/helios/", "helios/media/"),
                      ("/static/", "server_ui/media/"), ("/booth/", "heliosbooth/"),
                      ("/verifier/", "heliosverifier/")]:
        assert f"location {url} {{\n        alias /srv/helios/current/{path};" in site
    # Debian 13's nginx (1.26) warns about `listen ... http2`: the directive instead.
    assert "    listen 443 ssl;\n    listen [::]:443 ssl;\n    http2 on;\n" in site
    assert not re.search(r"listen .*http2", site)
    assert "return 301 https://$host$request_uri;" in site
    assert "proxy_set_header X-Forwarded-Proto https;" in site
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in site
    assert "RC4" not in site and "SEED" not in site
    env = read_env(deploy / ".env")
    assert env["CELERY_BROKER_URL"] == "amqp://localhost"


def test_amazon_linux_gets_valkey_and_the_http2_form_its_nginx_reads(project):
    configure(project, *BASE, "--os", "al2023")
    deploy = project / "deploy"
    assert "valkey.service" in (deploy / "systemd/helios-celery.service").read_text()
    assert read_env(deploy / ".env")["CELERY_BROKER_URL"] == "redis://localhost:6379/0"
    site = (deploy / "nginx/helios-https.conf").read_text()
    # AL2023's nginx 1.24 (1.22 on its first images) rejects `http2 on;`.
    assert "    listen 443 ssl http2;\n    listen [::]:443 ssl http2;\n" in site
    assert "http2 on;" not in site


def test_second_run_changes_nothing_and_says_so(project):
    assert configure(project, *BASE).returncode == 0
    before = snapshot(project / "deploy")
    again = configure(project, "--no-input")
    assert again.returncode == 0, again.stderr
    assert "No changes" in again.stdout
    assert snapshot(project / "deploy") == before


def test_rerun_keeps_secrets_and_hand_edits_and_reports_changed_keys(project):
    configure(project, *BASE)
    env_path = project / "deploy" / ".env"
    first = read_env(env_path)
    text = env_path.read_text().replace("DEFAULT_FROM_NAME=Helios",
                                        "DEFAULT_FROM_NAME='Election Office'")
    env_path.write_text(text + "SITE_TITLE='Our Elections'\n# a note of ours\n")
    result = configure(project, "--no-input", "--domain", "elections.example.org")
    assert result.returncode == 0, result.stderr
    after = read_env(env_path)
    assert after["SECRET_KEY"] == first["SECRET_KEY"]
    assert after["EMAIL_OPTOUT_SECRET"] == first["EMAIL_OPTOUT_SECRET"]
    assert after["DEFAULT_FROM_NAME"] == "Election Office"
    assert after["SITE_TITLE"] == "Our Elections"
    assert "# a note of ours" in env_path.read_text()
    assert after["URL_HOST"] == "https://elections.example.org"
    assert "changed ALLOWED_HOSTS, URL_HOST, SECURE_URL_HOST" in result.stdout
    assert "URL_HOST changes" in result.stderr
    assert first["SECRET_KEY"] not in result.stdout + result.stderr
    assert stat.S_IMODE(env_path.stat().st_mode) == 0o600


def test_dry_run_writes_nothing_and_masks_secrets(project):
    result = configure(project, *BASE, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert not (project / "deploy").exists()
    assert "would add" in result.stdout and "SECRET_KEY" in result.stdout
    assert GOOGLE_SECRET not in result.stdout


def test_hand_edited_file_is_not_overwritten_silently(project):
    configure(project, *BASE)
    unit = project / "deploy" / "systemd" / "gunicorn.service"
    edited = unit.read_text().replace("--workers 3", "--workers 9")
    unit.write_text(edited)
    before = snapshot(project / "deploy")
    refused = configure(project, "--no-input", "--from-name", "Votes")
    assert refused.returncode != 0
    assert "edited by hand: systemd/gunicorn.service" in refused.stderr
    assert "--force" in refused.stderr
    assert snapshot(project / "deploy") == before
    forced = configure(project, "--no-input", "--from-name", "Votes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "--workers 3" in unit.read_text()
    assert (unit.parent / "gunicorn.service.edited").read_text() == edited


def test_requirements_variant_is_recognised(tmp_path):
    project = make_fixture_project(tmp_path, variant="requirements")
    result = run_manage(project, "aws_configure", SETTINGS, *BASE[:4], "--auth-systems", "password",
                        "--no-input", "-v", "2",
                        env=helios_env())
    assert result.returncode == 0, result.stderr
    assert "dependencies from requirements.txt" in result.stdout
    assert "Python 3.13" in result.stdout


BAD_INPUTS = [
    (["--domain", "not a domain"], "--domain 'not a domain' is not a valid host name"),
    (["--domain", "https://vote.example.org/"], "is not a valid host name"),
    (["--email", "nobody-at-example"], "--email 'nobody-at-example' is not a valid e-mail"),
    (["--region", "us-east-7"], "--region 'us-east-7' is not an AWS region"),
    (["--os", "ubuntu"], "--os 'ubuntu' is not supported"),
    (["--os", "al2"], "end of support on 2026-06-30"),
    (["--ssh-cidr", "10.0.0.300/8"], "--ssh-cidr '10.0.0.300/8' is not an IP network"),
    (["--auth-systems", "password,devlogin"], "devlogin is refused"),
    (["--broker", "kafka"], "--broker 'kafka' is not supported"),
]


@pytest.mark.parametrize("flags,message", BAD_INPUTS, ids=[b[1][:30] for b in BAD_INPUTS])
def test_bad_input_is_refused_and_writes_nothing(project, flags, message):
    configure(project, *BASE)
    before = snapshot(project / "deploy")
    result = configure(project, "--no-input", *flags)
    assert result.returncode == 1
    assert "CommandError" in result.stderr and message in result.stderr
    assert "Hint:" in result.stderr
    assert snapshot(project / "deploy") == before


def test_bad_input_on_first_run_creates_no_directory(project):
    result = configure(project, "--domain", "vote.example.org", "--email", "bad", "--no-input")
    assert result.returncode == 1 and "not a valid e-mail" in result.stderr
    assert not (project / "deploy").exists()


def test_missing_values_without_input_name_the_flags(project):
    result = configure(project, "--no-input")
    assert result.returncode == 1
    assert "Missing --domain" in result.stderr


def test_unwritable_output_directory(project, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = configure(project, *BASE, "--output", str(blocker / "deploy"))
    assert result.returncode == 1
    assert "is not a directory" in result.stderr and "--output" in result.stderr
    assert blocker.read_text() == "not a directory"


def test_not_a_helios_project(tmp_path):
    project = make_not_helios_project(tmp_path)
    env = helios_env(DJANGO_SETTINGS_MODULE="mysite.settings")
    listed = run_manage(project, "help", env=env)
    assert "aws_configure" not in listed.stdout  # not installed there: use INSTALLED_APPS
    settings = project / "mysite" / "settings.py"
    settings.write_text(settings.read_text().replace(
        "INSTALLED_APPS = [", "INSTALLED_APPS = [\n    'helios_aws',"))
    result = run_manage(project, "aws_configure", *BASE, env=env)
    assert result.returncode == 1
    assert "does not look like a Helios checkout" in result.stderr or \
        "No WSGI application" in result.stderr or "No Celery app" in result.stderr
    assert "Hint:" in result.stderr
    assert not (project / "deploy").exists()


def test_google_without_secret_is_refused(project):
    env = helios_env()
    result = configure(project, *BASE, env=env)
    assert result.returncode == 1
    assert "google needs HELIOS_GOOGLE_CLIENT_SECRET (or --google-client-secret)" in result.stderr
    assert not (project / "deploy").exists()


def test_env_file_reads_the_same_through_django_environ(project, tmp_path):
    configure(project, *BASE, "--from-name", "Helios Elections & Co")
    env_path = project / "deploy" / ".env"
    code = ("import environ, json, os; os.environ.clear(); "
            f"environ.Env.read_env({str(env_path)!r}); print(json.dumps(dict(os.environ)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                       text=True, check=True).stdout)
    assert loaded["DEFAULT_FROM_NAME"] == "Helios Elections & Co"
    assert loaded == {k: v for k, v in read_env(env_path).items() if k}
    assert "DEFAULT_FROM_NAME='Helios Elections & Co'" in env_path.read_text()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs of its own (we are root in CI); skipped where mounting is refused."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(disk, leave):
    """Take all but ``leave`` bytes of ``disk`` with one file; returns it."""
    filler = disk / "filler"
    stats = os.statvfs(disk)
    filler.write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - leave))
    return filler


def test_a_full_disk_stops_configure_cleanly_and_a_rerun_completes(project, small_disk):
    out = small_disk / "deploy"
    filler = fill(small_disk, leave=3 * 4096)  # room for a few of the files, not all
    failed = configure(project, *BASE, "--output", str(out))
    assert failed.returncode == 1
    assert "No space left on device" in failed.stderr and "free space" in failed.stderr
    assert "Traceback" not in failed.stderr
    written = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert written, "the disk filled before any file: leave more room"
    assert not [p for p in written if p.name.endswith(".tmp")]

    filler.unlink()
    done = configure(project, *BASE, "--output", str(out))
    assert done.returncode == 0, done.stderr
    # Whatever the failed run left is complete: the same bytes the finished run has.
    for rel, data in written.items():
        if rel.name != ".env":
            assert (out / rel).read_bytes() == data, rel
    assert not [p for p in out.rglob("*.tmp")]
    env = read_env(out / ".env")
    assert env["DEBUG"] == "0" and len(env["SECRET_KEY"]) >= 50


def test_a_read_only_output_directory_is_a_clean_error(project, small_disk):
    out = small_disk / "deploy"
    assert configure(project, *BASE, "--output", str(out)).returncode == 0
    before = snapshot(out)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        result = configure(project, *BASE, "--from-name", "Elections", "--output", str(out))
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert result.returncode == 1
    assert "read-only file system" in result.stderr and "read-write" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(out) == before



def test_a_read_only_run_log_is_a_clean_error(project, small_disk, aws_env):
    out = small_disk / "deploy"
    assert configure(project, *BASE, "--output", str(out)).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        result = run_manage(project, "aws_provision", SETTINGS, "--output", str(out), "--plan",
                            env=helios_env())
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert result.returncode == 1
    assert f"{out}/provision.log: Read-only file system" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_record_changes_are_named_and_dry_run_shows_them(project):
    assert configure(project, *BASE).returncode == 0
    record = project / "deploy" / "deployment.json"
    before = record.read_text()
    dry = configure(project, "--no-input", "--instance-type", "t3.medium", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "deployment.json: would change instance_type ('t3.small' -> 't3.medium')" \
        in dry.stdout
    assert "No changes" not in dry.stdout
    assert record.read_text() == before
    result = configure(project, "--no-input", "--instance-type", "t3.medium",
                       "--volume-size", "20")
    assert result.returncode == 0, result.stderr
    assert ("deployment.json: changed instance_type ('t3.small' -> 't3.medium'), "
            "volume_size (16 -> 20)") in result.stdout
    assert "No changes" not in result.stdout
    assert json.loads(record.read_text())["volume_size"] == 20
    again = configure(project, "--no-input")
    assert "No changes" in again.stdout and "deployment.json" not in again.stdout
