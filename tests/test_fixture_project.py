"""The fixture project really has the Helios traps the plugin is tested against.

Everything runs in subprocesses, in copies of ``fixture_helios/``, as a
deployment would: the fixture's root ``settings`` module must never be
imported into the test process.
"""

import http.client
import json
import re
import secrets
import socket
import subprocess
import sys
import time
import tomllib

import pytest

import rig
from fixtures import (
    FIXTURE_REQUIREMENTS,
    helios_env,
    make_fixture_project,
    make_not_helios_project,
    run_manage,
)

PRODUCTION_ENV = {
    "DEBUG": "0",
    "SSL": "1",
    "HSTS": "1",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": "example.org",
    "URL_HOST": "https://example.org",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_fixture_project(tmp_path_factory.mktemp("fixture"), variant="requirements")


def run_python(project, code, env=None):
    """Run ``code`` with this interpreter in ``project``; return its last line of output parsed as JSON.

    Like ``wsgi.py``, it uses the root ``settings`` module unless ``env`` names another.
    """
    env = dict(helios_env() if env is None else env)
    env.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def read_settings(project, names, argv=("manage.py", "runserver"), **env):
    """Import the root ``settings`` module as a command with ``argv`` would; return ``names``."""
    code = (
        "import json, sys\n"
        "sys.argv = %r\n"
        "import settings\n"
        "print(json.dumps({name: getattr(settings, name, 'unset') for name in %r}))\n"
    ) % (list(argv), list(names))
    return run_python(project, code, helios_env(**env))


def check_ids(result):
    return sorted(set(re.findall(r"\((security\.[A-Z]\d+)\)", result.stdout + result.stderr)))


def test_check_deploy_leaves_only_the_csrf_and_hsts_false_positives(project):
    result = run_manage(project, "check", "--deploy", env=helios_env(**PRODUCTION_ENV))

    assert result.returncode == 0, result.stderr
    assert check_ids(result) == ["security.W003", "security.W004"]


def test_check_deploy_on_the_defaults_flags_debug_and_the_placeholder_key(project):
    result = run_manage(project, "check", "--deploy")

    assert {"security.W009", "security.W018"} <= set(check_ids(result))


def test_defaults_are_the_development_ones(project):
    names = [
        "DEBUG", "SECRET_KEY", "EMAIL_OPTOUT_SECRET", "ALLOWED_HOSTS", "URL_HOST", "SECURE_URL_HOST",
        "DEFAULT_FROM_EMAIL", "DEFAULT_FROM_NAME", "AUTH_ENABLED_SYSTEMS", "CELERY_BROKER_URL",
        "DATABASES", "EMAIL_HOST", "EMAIL_PORT", "EMAIL_BACKEND", "SECURE_SSL_REDIRECT",
        "SECURE_HSTS_SECONDS", "STATIC_ROOT", "INSTALLED_APPS", "MIDDLEWARE", "ROOT_URLCONF",
        "SESSION_ENGINE", "STS", "ADMINS",
    ]
    found = read_settings(project, names)

    assert found["DEBUG"] is True
    assert found["SECRET_KEY"] == "replaceme"
    assert found["EMAIL_OPTOUT_SECRET"] == "replace-with-secure-random-key"
    assert found["ALLOWED_HOSTS"] == ["localhost"]
    assert found["URL_HOST"] == found["SECURE_URL_HOST"] == "http://localhost:8000"
    assert (found["DEFAULT_FROM_EMAIL"], found["DEFAULT_FROM_NAME"]) == ("ben@adida.net", "Ben for Helios")
    assert found["AUTH_ENABLED_SYSTEMS"] == ["devlogin", "ldap", "password", "google", "facebook"]
    assert found["CELERY_BROKER_URL"] == "amqp://localhost"
    assert found["ADMINS"] == []
    assert found["DATABASES"] == {
        "default": {"ENGINE": "django.db.backends.postgresql", "NAME": "helios", "CONN_MAX_AGE": 600}}
    assert (found["EMAIL_HOST"], found["EMAIL_PORT"], found["EMAIL_BACKEND"]) == ("localhost", 2525, "unset")
    assert found["SECURE_SSL_REDIRECT"] == found["SECURE_HSTS_SECONDS"] == found["STATIC_ROOT"] == "unset"
    assert "django.contrib.staticfiles" not in found["INSTALLED_APPS"]
    assert "django.middleware.csrf.CsrfViewMiddleware" not in found["MIDDLEWARE"]
    # The HSTS middleware is always there; it only sends the header when STS is on.
    assert "helios.security.HSTSMiddleware" in found["MIDDLEWARE"] and found["STS"] is False
    assert (found["ROOT_URLCONF"], found["SESSION_ENGINE"]) == ("urls", "django.contrib.sessions.backends.db")


def test_ldap_is_hard_wired_to_the_public_test_directory(project):
    names = ["AUTH_LDAP_SERVER_URI", "AUTH_LDAP_BIND_DN", "AUTH_LDAP_BIND_PASSWORD"]
    found = read_settings(project, names, AUTH_LDAP_SERVER_URI="ldaps://ldap.example.org",
                          AUTH_LDAP_BIND_DN="cn=reader,dc=example,dc=org")
    assert found == {"AUTH_LDAP_SERVER_URI": "ldap://ldap.forumsys.com",
                     "AUTH_LDAP_BIND_DN": "cn=read-only-admin,dc=example,dc=com",
                     "AUTH_LDAP_BIND_PASSWORD": "password"}


def test_production_values_come_from_the_environment(project):
    found = read_settings(
        project,
        ["DEBUG", "ALLOWED_HOSTS", "URL_HOST", "SECURE_URL_HOST", "AUTH_ENABLED_SYSTEMS", "STS",
         "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "SECURE_PROXY_SSL_HEADER", "SECURE_HSTS_SECONDS",
         "EMAIL_BACKEND"],
        DEBUG="0", SSL="1", HSTS="1", EMAIL_USE_AWS="1", ALLOWED_HOSTS="vote.example.org,www.example.org",
        URL_HOST="https://vote.example.org/", AUTH_ENABLED_SYSTEMS="password,google",
    )

    assert found["DEBUG"] is False
    assert found["ALLOWED_HOSTS"] == ["vote.example.org", "www.example.org"]
    assert found["URL_HOST"] == found["SECURE_URL_HOST"] == "https://vote.example.org"
    assert found["AUTH_ENABLED_SYSTEMS"] == ["password", "google"]
    assert found["STS"] is True
    assert found["SECURE_SSL_REDIRECT"] is found["SESSION_COOKIE_SECURE"] is True
    assert found["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert found["SECURE_HSTS_SECONDS"] == "unset"
    assert found["EMAIL_BACKEND"] == "django_ses.SESBackend"


def test_booleans_are_true_only_for_the_string_1(project):
    found = read_settings(
        project, ["DEBUG", "STS", "SECURE_SSL_REDIRECT", "EMAIL_BACKEND"],
        DEBUG="true", SSL="yes", HSTS="True", EMAIL_USE_AWS="on",
    )

    assert found == {"DEBUG": False, "STS": False, "SECURE_SSL_REDIRECT": "unset", "EMAIL_BACKEND": "unset"}


@pytest.mark.parametrize(
    "argv, reads_env",
    [
        (["manage.py", "test"], False),
        (["manage.py", "test", "helios"], False),
        (["manage.py", "check", "--tag", "test"], False),
        (["manage.py", "testserver"], True),
        (["manage.py", "check"], True),
    ],
)
def test_a_test_word_on_the_command_line_ignores_the_environment(project, argv, reads_env):
    found = read_settings(project, ["TESTING", "SECRET_KEY", "DEBUG"], argv=argv, SECRET_KEY="from-env", DEBUG="0")

    expected = {"TESTING": False, "SECRET_KEY": "from-env", "DEBUG": False} if reads_env else {
        "TESTING": True, "SECRET_KEY": "replaceme", "DEBUG": True}
    assert found == expected


def test_database_url_always_requires_ssl(project):
    found = read_settings(project, ["DATABASES"], DATABASE_URL="postgres://helios:pw@db.example.org:5432/helios")

    database = found["DATABASES"]["default"]
    assert (database["HOST"], database["NAME"], database["USER"]) == ("db.example.org", "helios", "helios")
    assert database["OPTIONS"] == {"sslmode": "require"}
    assert database["CONN_MAX_AGE"] == 600


def test_settings_cannot_be_imported_without_python_ldap(project):
    code = "import sys\nsys.modules['ldap'] = None\nimport settings\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=project, env=helios_env(), capture_output=True, text=True)

    assert result.returncode == 1
    assert "import ldap" in result.stderr


RAW_READERS = """
import json
import django
django.setup()
from django.conf import settings
from django.test import Client
from helios_auth import views
client = Client(HTTP_HOST='localhost')
print(json.dumps({
    'django': settings.URL_HOST,
    'raw_view': client.get('/auth/url-host').content.decode(),
    'after_login_url': views.after_login_url(),
    'systems': client.get('/auth/systems').json()['systems'],
}))
"""


def test_an_overlay_does_not_reach_the_raw_settings_readers(project):
    (project / "overlay_settings.py").write_text(
        "from settings import *\n"
        "URL_HOST = SECURE_URL_HOST = 'https://overlay.example.org'\n"
        "AUTH_ENABLED_SYSTEMS = ['password']\n"
    )

    seen = run_python(project, RAW_READERS, helios_env(DJANGO_SETTINGS_MODULE="overlay_settings"))

    assert seen == {
        "django": "https://overlay.example.org",
        "raw_view": "http://localhost:8000",
        "after_login_url": "http://localhost:8000/auth/after/",
        "systems": ["devlogin", "ldap", "password", "google", "facebook"],
    }


def test_the_environment_reaches_the_raw_settings_readers(project):
    env = helios_env(URL_HOST="https://env.example.org", AUTH_ENABLED_SYSTEMS="password", DEBUG="0")

    seen = run_python(project, RAW_READERS, env)

    assert seen == {
        "django": "https://env.example.org",
        "raw_view": "https://env.example.org",
        "after_login_url": "https://env.example.org/auth/after/",
        "systems": ["password"],
    }


def test_static_trees_are_serve_patterns_in_the_urlconf(project):
    code = (
        "import json, os, django\n"
        "django.setup()\n"
        "from django.urls import get_resolver\n"
        "from django.views.static import serve\n"
        "print(json.dumps([[str(p.pattern), os.path.relpath(p.default_args['document_root'])]\n"
        "                  for p in get_resolver().url_patterns if getattr(p, 'callback', None) is serve]))\n"
    )

    assert dict(run_python(project, code)) == {
        "^booth/(?P<path>.*)$": "heliosbooth",
        "^verifier/(?P<path>.*)$": "heliosverifier",
        "^static/auth/(?P<path>.*)$": "helios_auth/media",
        "^static/helios/(?P<path>.*)$": "helios/media",
        "^static/(?P<path>.*)$": "server_ui/media",
    }


@pytest.fixture(scope="module")
def gunicorn_port(project):
    """gunicorn serving ``wsgi:application`` with production settings and no reachable database."""
    port = rig.free_port()
    env = helios_env(**PRODUCTION_ENV, PGHOST=str(project / "no-database-here"))
    log = project / "gunicorn.log"
    with open(log, "w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:%d" % port, "--workers", "1", "wsgi:application"],
            cwd=project, env=env, stdout=output, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not start:\n" + log.read_text())
                time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=15)


def fetch(port, path, host="example.org", https=True):
    """GET ``path`` the way nginx would forward it; return (status, headers, body) without following redirects."""
    headers = {"Host": host}
    if https:
        headers["X-Forwarded-Proto"] = "https"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_liveness_probe_answers_json_without_a_database(gunicorn_port):
    status, headers, body = fetch(gunicorn_port, "/helios/elections/params")

    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert set(json.loads(body)) == {"p", "q", "g"}
    assert headers["Strict-Transport-Security"].startswith("max-age=")


def test_home_page_needs_the_database(gunicorn_port):
    assert fetch(gunicorn_port, "/")[0] == 500


@pytest.mark.parametrize(
    "path, source",
    [
        ("/static/logo.png", "server_ui/media/logo.png"),
        ("/static/main.css", "server_ui/media/main.css"),
        ("/static/auth/login-icons/password.png", "helios_auth/media/login-icons/password.png"),
        ("/static/helios/css/helios.css", "helios/media/css/helios.css"),
        ("/booth/index.html", "heliosbooth/index.html"),
        ("/verifier/verify.html", "heliosverifier/verify.html"),
    ],
)
def test_static_files_are_served_from_the_source_tree(gunicorn_port, project, path, source):
    status, _, body = fetch(gunicorn_port, path)

    assert status == 200
    assert body == (project / source).read_bytes()


def test_logo_is_a_png(project):
    assert (project / "server_ui/media/logo.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("path", ["/favicon.ico", "/robots.txt", "/health", "/booth/"])
def test_there_is_no_favicon_robots_or_health_endpoint(gunicorn_port, path):
    assert fetch(gunicorn_port, path)[0] == 404


def test_plain_http_is_redirected_to_https(gunicorn_port):
    status, headers, _ = fetch(gunicorn_port, "/helios/elections/params", https=False)

    assert status == 301
    assert headers["Location"] == "https://example.org/helios/elections/params"


def test_unknown_host_is_refused(gunicorn_port):
    assert fetch(gunicorn_port, "/helios/elections/params", host="other.example.net")[0] == 400


READINESS = """
import json
import django
django.setup()
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

def hit(path):
    with CaptureQueriesContext(connection) as queries:
        response = Client(HTTP_HOST='localhost').get(path)
    return response.status_code, len(queries), response.has_header('Strict-Transport-Security')

sessions = Session.objects.count()
print(json.dumps({
    'params': hit('/helios/elections/params'),
    'home': [hit('/'), hit('/')],
    'new_sessions': Session.objects.count() - sessions,
}))
"""


def test_migrations_and_readiness_against_postgresql(project):
    # A cluster of its own: the test needs a `helios` database nothing has migrated yet.
    postgres = rig.Postgres()
    try:
        env = helios_env(**postgres.env)
        before = run_manage(project, "showmigrations", "--plan", env=env, check=True).stdout
        run_manage(project, "migrate", "--no-input", env=env, check=True)
        after = run_manage(project, "showmigrations", "--plan", env=env, check=True).stdout
        seen = run_python(project, READINESS, env)
    finally:
        postgres.stop()

    assert "[ ]  helios.0001_initial" in before
    assert "[X]  helios.0001_initial" in after and "[ ]" not in after
    assert seen["params"] == [200, 0, False]
    assert [status for status, _, _ in seen["home"]] == [200, 200]
    assert all(queries > 0 for _, queries, _ in seen["home"])
    assert seen["new_sessions"] == 2


def test_celery_app_is_found_as_celery_finds_it(project):
    code = (
        "import json\n"
        "from celery.app.utils import find_app\n"
        "app = find_app('helios')\n"
        "import django\n"
        "django.setup()\n"
        "import helios.tasks\n"
        "print(json.dumps([app.main, app.conf.broker_url, app.tasks['helios.tasks.echo'].apply(('pong',)).get()]))\n"
    )
    broker = "amqp://guest:guest@broker.example.org:5672//"

    assert run_python(project, code, helios_env(CELERY_BROKER_URL=broker)) == ["helios", broker, "pong"]


def test_requirements_variant_is_an_older_checkout(tmp_path):
    project = make_fixture_project(tmp_path, variant="requirements")

    assert (project / "requirements.txt").read_text() == FIXTURE_REQUIREMENTS.read_text()
    assert not any((project / name).exists() for name in ("pyproject.toml", "uv.lock", ".python-version"))
    assert (project / "settings.py").exists() and (project / "wsgi.py").exists()


def test_uv_variant_is_a_locked_python_313_project(tmp_path):
    project = make_fixture_project(tmp_path, variant="uv")
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    lock = tomllib.loads((project / "uv.lock").read_text())

    assert pyproject["project"]["requires-python"] == ">=3.13"
    assert pyproject["tool"]["uv"]["package"] is False
    assert (project / ".python-version").read_text().strip() == "3.13"
    assert not (project / "requirements.txt").exists()
    assert sorted(pyproject["project"]["dependencies"]) == sorted(FIXTURE_REQUIREMENTS.read_text().split())
    locked = {package["name"]: package["version"] for package in lock["package"]}
    for pin in pyproject["project"]["dependencies"]:
        name, version = pin.split("==")
        assert locked[name] == version
    assert lock["requires-python"] == ">=3.13"


def test_not_helios_project_has_no_root_settings_or_wsgi(tmp_path):
    project = make_not_helios_project(tmp_path)

    assert (project / "manage.py").exists()
    assert not (project / "settings.py").exists() and not (project / "wsgi.py").exists()
    assert "mysite.settings" in (project / "manage.py").read_text()
