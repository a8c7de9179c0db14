"""The helios_aws system checks, run by `manage.py check --deploy` on the Helios-like fixture
with the .env aws_configure writes, and with that .env broken one way at a time."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import helios_env, make_fixture_project, run_manage

SETTINGS = "--settings=helios_aws.settings_overrides.production"
CONFIGURE = ["aws_configure", SETTINGS, "--domain", "vote.example.org", "--email",
             "elections@example.org", "--auth-systems", "password", "--broker", "rabbitmq",
             "--no-input"]
ID_RE = re.compile(r"\((\w+\.[CEWID]\d{3})\)")


@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    project = make_fixture_project(tmp_path_factory.mktemp("checks"), "requirements")
    result = run_manage(project, *CONFIGURE)
    assert result.returncode == 0, result.stderr
    return project


def env_text(project):
    return (project / "deploy/.env").read_text()


def write_env(tmp_path, text, mode=0o600):
    path = tmp_path / "helios.env"
    path.write_text(text)
    path.chmod(mode)
    return path


def with_values(text, **values):
    """The .env text with each KEY=value replaced (or added)."""
    for key, value in values.items():
        text, count = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
        if not count:
            text += f"{key}={value}\n"
    return text


def check_ids(project, env_file, *args):
    result = run_manage(project, "check", SETTINGS, *args,
                        env=helios_env(HELIOS_ENV_FILE=str(env_file)))
    return set(ID_RE.findall(result.stdout + result.stderr)), result


def ours(ids):
    return {i for i in ids if i.startswith("helios_aws.")}


def test_good_env_leaves_only_djangos_two_false_positives(configured, tmp_path):
    # A unix-socket DATABASE_URL is fine: libpq ignores sslmode=require on sockets.
    text = with_values(env_text(configured),
                       DATABASE_URL="postgres://helios@%2Frun%2Fpostgresql/helios")
    env_file = write_env(tmp_path, text)
    ids, result = check_ids(configured, env_file, "--deploy")
    assert ids == {"security.W003", "security.W004"}, result.stdout + result.stderr
    ids, result = check_ids(configured, env_file)
    assert ids == set() and result.returncode == 0, result.stderr


def test_helios_defaults_fail_each_production_check(configured, tmp_path):
    env_file = write_env(tmp_path, "# nothing: Helios's own defaults\n")
    ids, result = check_ids(configured, env_file, "--deploy")
    assert result.returncode == 1
    assert ours(ids) == {
        "helios_aws.E001",  # DEBUG defaults to on
        "helios_aws.E002",  # SECRET_KEY 'replaceme'
        "helios_aws.E003",  # EMAIL_OPTOUT_SECRET 'replace-with-secure-random-key'
        "helios_aws.E005",  # URL_HOST http://localhost:8000
        "helios_aws.E006",  # SECURE_URL_HOST too
        "helios_aws.E007",  # SSL off
        "helios_aws.E008",  # DEFAULT_FROM_EMAIL ben@adida.net
        "helios_aws.E009",  # google enabled by default, without client id and secret
        "helios_aws.E012",  # devlogin, added by DEBUG
        "helios_aws.E013",  # ldap enabled by default; the overlay gives it no directory
        "helios_aws.E014",  # facebook enabled by default, without app id and secret
        "helios_aws.E017",  # URL_HOST has 'localhost' (autologin), ALLOWED_HOSTS localhost
        "helios_aws.W001",  # HSTS off
        "helios_aws.W002",  # SMTP, not SES
    }, result.stderr
    assert "DEFAULT_FROM_EMAIL=ben@adida.net" in result.stderr


def test_secrets_hosts_and_urls(configured, tmp_path):
    text = with_values(
        env_text(configured),
        SECRET_KEY="weak-but-no-placeholder",
        EMAIL_OPTOUT_SECRET="short",
        ALLOWED_HOSTS="other.example.org",
        URL_HOST="https://vote.example.org/helios",
        SECURE_URL_HOST="http://vote.example.org",
        SSL="true",
        HSTS="0",
        DEBUG="1",
    )
    ids, result = check_ids(configured, write_env(tmp_path, text), "--deploy")
    assert ours(ids) == {
        "helios_aws.E001",  # DEBUG=1
        "helios_aws.E004",  # vote.example.org not in ALLOWED_HOSTS
        "helios_aws.E005",  # a path in URL_HOST
        "helios_aws.E006",  # http:// SECURE_URL_HOST
        "helios_aws.E007",  # SSL=true is off for Helios...
        "helios_aws.W006",  # ...which is why it is named
        "helios_aws.E012",  # DEBUG adds devlogin
        "helios_aws.W001",  # HSTS=0
        "helios_aws.W003",  # a short EMAIL_OPTOUT_SECRET
    }, result.stderr
    # A weak SECRET_KEY is Django's own finding; ours is for placeholders only.
    assert "security.W009" in ids
    # Without HSTS, Django's W004 is no false positive: it stays.
    assert "security.W004" in ids
    assert "SSL=true" in result.stderr


def test_mail_auth_database_broker_and_file_mode(configured, tmp_path):
    text = with_values(
        env_text(configured),
        EMAIL_USE_AWS="0",
        DEFAULT_FROM_EMAIL="webmaster@localhost",
        AUTH_ENABLED_SYSTEMS="password,google,devlogin",
        GOOGLE_CLIENT_ID="id-without-secret.apps",
        DATABASE_URL="postgres://helios:pw@127.0.0.1:5432/helios",
        CELERY_BROKER_URL="librabbitmq://localhost",
    )
    ids, result = check_ids(configured, write_env(tmp_path, text, mode=0o644), "--deploy")
    assert ours(ids) == {
        "helios_aws.W002",  # SMTP
        "helios_aws.E008",  # a placeholder sender
        "helios_aws.E009",  # google without its secret
        "helios_aws.E012",  # devlogin listed explicitly
        "helios_aws.W004",  # Helios requires SSL on DATABASE_URL: not on a local server
        "helios_aws.E011",  # librabbitmq is not installed
        "helios_aws.E010",  # the .env is readable by others
    }, result.stderr
    assert "needs the 'librabbitmq' package" in result.stderr
    assert "mode 0644" in result.stderr


def test_unknown_broker_transport(configured, tmp_path):
    text = with_values(env_text(configured), CELERY_BROKER_URL="nosuch://localhost")
    ids, result = check_ids(configured, write_env(tmp_path, text), "--deploy")
    assert ours(ids) == {"helios_aws.E011"}
    assert "kombu has no 'nosuch' transport" in result.stderr


def test_overlay_values_that_helios_never_sees(configured, tmp_path):
    (configured / "trap_settings.py").write_text(
        "from helios_aws.settings_overrides.production import *  # noqa\n"
        "URL_HOST = 'https://elsewhere.example.org'\n")
    env_file = write_env(tmp_path, env_text(configured))
    result = run_manage(configured, "check", "--settings=trap_settings",
                        env=helios_env(HELIOS_ENV_FILE=str(env_file)))
    # Not deploy-only: the trap matters wherever the overlay is used.
    assert set(ID_RE.findall(result.stderr + result.stdout)) == {"helios_aws.W005"}
    assert "URL_HOST" in result.stderr


def test_every_id_is_documented_with_its_level():
    from django.core.checks import ERROR

    from helios_aws import checks
    from helios_aws.probes.base import REGISTRY

    text = (Path(__file__).resolve().parent.parent / "docs/checks.md").read_text()
    documented = dict(re.findall(r"^\| `([\w.]+)` \| (error|warning) \|", text, re.M))
    expected = {c.id: "error" if c.level >= ERROR else "warning" for c, _ in checks.MESSAGES}
    expected.update({p.id: p.level for p in REGISTRY.values()})
    assert documented == expected


@pytest.mark.parametrize("case", ["missing", "a directory", "not UTF-8"])
def test_helios_does_not_start_without_its_deployed_env(configured, tmp_path, case):
    env_file = tmp_path / "helios.env"
    if case == "a directory":
        env_file.mkdir()
    elif case == "not UTF-8":
        env_file.write_bytes(b"DEBUG=0\nSECRET_KEY=\xff\n")
    reason = {"missing": "does not exist", "a directory": "Is a directory",
              "not UTF-8": "is not UTF-8 (byte 0xff"}[case]

    checked = run_manage(configured, "check", SETTINGS,
                         env=helios_env(HELIOS_ENV_FILE=str(env_file)))
    # gunicorn as the unit starts it: the worker cannot load the application, so no
    # request is ever answered with Helios's development defaults.
    served = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "wsgi:application"], cwd=configured, capture_output=True, text=True, timeout=60,
        env=helios_env(HELIOS_ENV_FILE=str(env_file),
                       DJANGO_SETTINGS_MODULE="helios_aws.settings_overrides.production"))

    for result in (checked, served):
        assert result.returncode != 0
        assert f"HELIOS_ENV_FILE {env_file}" in result.stderr
        assert reason in result.stderr
        assert "development defaults, so it does not start" in result.stderr
    assert "Worker failed to boot" in served.stderr


def test_an_unreadable_default_env_is_skipped_and_fails_E016(configured):
    default = configured / "deploy/.env"
    kept = default.read_bytes()
    default.write_bytes(b"DEBUG=0\n\xfe\n")
    try:
        result = run_manage(configured, "check", SETTINGS, env=helios_env())
    finally:
        default.write_bytes(kept)

    assert result.returncode == 1
    assert f"helios-aws: {default} is not UTF-8 (byte 0x" in result.stderr
    assert "helios_aws.E016" in result.stderr + result.stdout


def test_a_default_env_not_written_yet_is_no_error(configured, tmp_path):
    project = make_fixture_project(tmp_path, "requirements")

    result = run_manage(project, "check", SETTINGS, env=helios_env())

    assert "helios_aws.E016" not in result.stdout + result.stderr
    assert "cannot be read" not in result.stderr
