"""Installing helios-aws into a uv-managed Helios, as the README says, survives ``uv sync``.

Helios's developers manage its environment with uv: ``uv sync`` makes ``.venv`` match
``uv.lock`` exactly, so a package installed into it by hand is removed by the next sync.
The README's way, ``uv run --with-editable PATH``, adds helios-aws to an overlay environment
of that one command and leaves ``.venv`` and Helios's files alone. The overlay settings then read
the ``deploy/.env`` that ``aws_configure`` wrote, with no ``HELIOS_ENV_FILE`` needed.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import CAPTURED_OUTPUT, helios_env, make_fixture_project
from test_configure import BASE, GOOGLE_SECRET

REPOSITORY = Path(__file__).resolve().parent.parent
OVERLAY = "helios_aws.settings_overrides.production"


@pytest.fixture(scope="module")
def uv_project(tmp_path_factory):
    from uv import find_uv_bin

    project = make_fixture_project(tmp_path_factory.mktemp("uv"), "uv")
    env = helios_env(UV_PYTHON=sys.executable, UV_PYTHON_DOWNLOADS="never", NO_COLOR="1",
                     UV_PROJECT_ENVIRONMENT=str(project / ".venv"))
    env.pop("VIRTUAL_ENV", None)
    uv = find_uv_bin()

    def run(*args, timeout=600, **extra):
        result = subprocess.run([uv, *args], cwd=project, env=dict(env, **extra),
                                capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        CAPTURED_OUTPUT.append(result.stdout + result.stderr)
        return result

    synced = run("sync", "--frozen", "--quiet")
    assert synced.returncode == 0, synced.stderr
    return project, run


def manage(run, *args, **env):
    """``uv run --with-editable HELIOS-AWS python manage.py ARGS``, as the README gives it."""
    return run("run", "--frozen", "--with-editable", str(REPOSITORY), "python", "manage.py",
               *args, DJANGO_SETTINGS_MODULE=OVERLAY, **env)


def test_uv_run_with_survives_uv_sync_and_reads_the_deployment_env(uv_project):
    project, run = uv_project
    assert "aws_configure" in manage(run, "help").stdout

    configured = manage(run, "aws_configure", *BASE, HELIOS_GOOGLE_CLIENT_SECRET=GOOGLE_SECRET)
    assert configured.returncode == 0, configured.stderr
    assert (project / "deploy/.env").is_file()

    # helios-aws never entered the project's own environment, so a sync has nothing to undo.
    synced = run("sync", "--frozen")
    assert synced.returncode == 0, synced.stderr
    assert "helios-aws" not in synced.stderr
    listed = manage(run, "help")
    assert "aws_configure" in listed.stdout and "aws_check" in listed.stdout, listed.stderr

    # Without HELIOS_ENV_FILE the overlay reads deploy/.env: Helios sees the deployment's
    # values, not its development defaults, so the deploy checks pass.
    check = manage(run, "check", "--deploy", "--fail-level", "ERROR")
    assert check.returncode == 0, check.stdout + check.stderr
    shown = manage(run, "shell", "-c",
                   "from django.conf import settings; print(settings.DEBUG, settings.ALLOWED_HOSTS)")
    assert "False ['vote.example.org']" in shown.stdout.splitlines(), shown.stdout + shown.stderr


def test_pip_install_into_a_plain_virtualenv(tmp_path):
    project = make_fixture_project(tmp_path, "requirements")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run([python, "-m", "pip", "install", "-q", "-r", "requirements.txt",
                                str(REPOSITORY)], cwd=project, capture_output=True, text=True,
                               timeout=600)
    assert installed.returncode == 0, installed.stderr
    env = helios_env(DJANGO_SETTINGS_MODULE=OVERLAY)
    listed = subprocess.run([python, "manage.py", "help"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=120)
    assert "aws_configure" in listed.stdout, listed.stderr
    shown = subprocess.run([python, "-c", "import helios_aws; print(helios_aws.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert shown.stdout.startswith(str(venv)), shown.stdout
