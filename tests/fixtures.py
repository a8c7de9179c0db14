"""Build the projects the tests run against.

``fixture_helios/`` is a miniature Helios-like project (see the docstring of its
``settings.py``). Tests never run it in place: ``make_fixture_project`` copies it
to a temporary directory, in one of the two layouts Helios checkouts come in.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
FIXTURE_DIR = TESTS_DIR / "fixture_helios"
FIXTURE_REQUIREMENTS = TESTS_DIR / "fixture_helios_requirements.txt"
# Generated files live here, outside version control (see .gitignore).
CACHE_DIR = TESTS_DIR.parent / ".cache" / "fixture_helios"

VARIANTS = ("uv", "requirements")
# The fixture's TIME_ZONE (as Helios's): the zone its database session stores election
# times in, which aws_provision records in the host's backup.json.
HELIOS_TIME_ZONE = "America/Los_Angeles"

# Every variable the fixture's settings.py reads; cleared so that a test starts
# from the defaults whatever the developer's shell exports.
HELIOS_ENV_VARS = (
    "ADMIN_EMAIL",
    "ADMIN_NAME",
    "ALLOWED_HOSTS",
    "AUTH_DEFAULT_SYSTEM",
    "AUTH_ENABLED_SYSTEMS",
    "CELERY_BROKER_URL",
    "CELERY_TASK_ALWAYS_EAGER",
    "DATABASE_URL",
    "DEBUG",
    "DEFAULT_FROM_EMAIL",
    "DEFAULT_FROM_NAME",
    "EMAIL_HOST",
    "EMAIL_HOST_PASSWORD",
    "EMAIL_HOST_USER",
    "EMAIL_OPTOUT_SECRET",
    "EMAIL_PORT",
    "EMAIL_USE_AWS",
    "EMAIL_USE_TLS",
    "CAS_ELIGIBILITY_REALM",
    "CAS_ELIGIBILITY_URL",
    "CAS_PASSWORD",
    "CAS_USERNAME",
    "FACEBOOK_API_SECRET",
    "FACEBOOK_APP_ID",
    "GH_CLIENT_ID",
    "GH_CLIENT_SECRET",
    "GITLAB_CLIENT_ID",
    "GITLAB_CLIENT_SECRET",
    "GOOGLE_CLIENT_ID",
    "GOOGLE_CLIENT_SECRET",
    "HELP_EMAIL_ADDRESS",
    "HSTS",
    "LINKEDIN_CLIENT_ID",
    "LINKEDIN_CLIENT_SECRET",
    "MAIN_LOGO_URL",
    "ROLLBAR_ACCESS_TOKEN",
    "SECRET_KEY",
    "SECURE_URL_HOST",
    "SITE_TITLE",
    "SSL",
    "URL_HOST",
)
# Also cleared: what picks the settings module, libpq's own variables, and the LDAP
# settings helios-aws's overlay reads (the fixture hard-codes its own, as Helios does).
_ALSO_CLEARED = ("DJANGO_SETTINGS_MODULE", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE",
                 "AUTH_LDAP_SERVER_URI", "AUTH_LDAP_BIND_DN", "AUTH_LDAP_BIND_PASSWORD",
                 "AUTH_LDAP_START_TLS", "AUTH_LDAP_USER_SEARCH_BASE", "AUTH_LDAP_USER_FILTER",
                 "LDAPTLS_CACERT")

_COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".venv", "celerybeat-schedule*")


def make_fixture_project(tmp_path, variant="uv"):
    """Copy the Helios-like fixture to ``tmp_path/helios-server`` and return that path.

    ``variant="uv"``: today's layout, ``pyproject.toml`` + ``uv.lock`` +
    ``.python-version`` (the lock is a real one, see ``fixture_lock_file``).
    ``variant="requirements"``: an older checkout, ``requirements.txt`` only.
    """
    if variant not in VARIANTS:
        raise ValueError("variant must be one of %s, not %r" % (", ".join(VARIANTS), variant))
    project = Path(tmp_path) / "helios-server"
    shutil.copytree(FIXTURE_DIR, project, ignore=_COPY_IGNORE)
    if variant == "uv":
        shutil.copyfile(fixture_lock_file(), project / "uv.lock")
    else:
        (project / "pyproject.toml").unlink()
        (project / ".python-version").unlink()
        shutil.copyfile(FIXTURE_REQUIREMENTS, project / "requirements.txt")
    return project


def fixture_lock_file():
    """Return a ``uv.lock`` made by ``uv lock`` for the fixture's ``pyproject.toml``.

    The lock names the package index it was resolved against, so it is
    generated rather than kept in the repository; it is cached per content of
    ``pyproject.toml``. ``uv lock`` works offline once uv's cache holds the
    metadata, and needs the package index the first time.
    """
    pyproject = (FIXTURE_DIR / "pyproject.toml").read_bytes()
    cached = CACHE_DIR / ("uv-%s.lock" % hashlib.sha256(pyproject).hexdigest()[:16])
    if cached.exists():
        return cached
    from uv import find_uv_bin

    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never", NO_COLOR="1")
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "pyproject.toml").write_bytes(pyproject)
        command = [find_uv_bin(), "lock", "--quiet", "--python", sys.executable]
        result = subprocess.run(command + ["--offline"], cwd=work, env=env, capture_output=True, text=True)
        if result.returncode:
            result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError("uv lock failed for the fixture project:\n" + result.stderr)
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".lock.%d" % os.getpid())
        shutil.copyfile(Path(work) / "uv.lock", partial)
        os.replace(partial, cached)
    return cached


def make_not_helios_project(tmp_path):
    """Create a plain ``startproject`` Django project (no root settings.py or wsgi.py).

    Returns its directory, ``tmp_path/mysite``, which holds ``manage.py``.
    """
    project = Path(tmp_path) / "mysite"
    project.mkdir()
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "mysite", str(project)],
        check=True,
        capture_output=True,
        env=helios_env(),
    )
    return project


def helios_env(**overrides):
    """``os.environ`` without any variable the fixture reads, plus ``overrides``."""
    env = {name: value for name, value in os.environ.items() if name not in HELIOS_ENV_VARS + _ALSO_CLEARED}
    env.update(overrides)
    return env


# Everything the commands printed during this test session, for the secrets scan at its
# end (test_zz_secrets.py).
CAPTURED_OUTPUT = []


def run_manage(project, *args, env=None, check=False, timeout=60):
    """Run ``manage.py ARGS`` of ``project`` with this interpreter; return the CompletedProcess.

    Standard input is empty: no command may wait for an answer in a test.
    """
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env=helios_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    CAPTURED_OUTPUT.append(result.stdout + result.stderr)
    if check:
        result.check_returncode()
    return result
