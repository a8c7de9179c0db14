"""The host recipes' commands, checked so that a typo cannot pass.

Every command of both recipes is rendered and read by ``sh -n`` and shellcheck; the
package names are checked against this machine's apt (Debian) or the names Amazon Linux
2023 is known to ship; the retry around ``dnf`` and the python3.13 queries are run by a
real shell against stub ``dnf`` and ``apt-cache`` commands put first on PATH.
"""

import os
import subprocess
from pathlib import Path

import django
import pytest
from django.conf import settings

from helios_aws import params
from helios_aws.errors import HostError
from helios_aws.host import base as host_base, preflight, recipes, steps as host

from test_host_steps import facts, make_ctx, project  # noqa: F401 (a fixture)

if not settings.configured:
    settings.configure()
    django.setup()

RECIPES = list(recipes.RECIPES.values())
# Debian 13 packages this machine's apt (Debian 12) cannot know: Python 3.13 is trixie's.
TRIXIE_ONLY = {"python3.13", "python3.13-venv", "python3.13-dev"}
# What Amazon Linux 2023 ships, by the names its repository uses (HELIOS.md).
AL2023_PACKAGES = {
    "python3.13", "python3.13-devel", "gcc", "openldap-devel", "cyrus-sasl-devel",
    "postgresql15-server", "nginx", "certbot", "ca-certificates", "util-linux",
}
RPM_LOCK = ("error: can't create transaction lock on /var/lib/rpm/.rpm.lock "
            "(Resource temporarily unavailable)")


def commands(recipe):
    """(label, command) for every command the recipe gives the host steps."""
    brokers = list(recipe.broker_packages)
    names = recipe.packages(brokers[0], git=True)
    rendered = [
        ("query_packages", recipe.query_packages(names)),
        ("install_packages", recipe.install_packages(names)),
        ("python_query", recipe.python_query()),
        ("ca_update", recipe.ca_update),
        ("ca_anchors", f"rm -f {recipe.ca_anchor_glob}"),
    ]
    if recipe.postgres_init():
        rendered.append(("postgres_init", recipe.postgres_init()))
    rendered += [(f"broker_restart {b}", recipe.broker_restart(b)) for b in brokers]
    return rendered


ALL_COMMANDS = [(r.os, label, command) for r in RECIPES for label, command in commands(r)]


@pytest.mark.parametrize("os_name,label,command", ALL_COMMANDS,
                         ids=[f"{o}-{label}" for o, label, _ in ALL_COMMANDS])
def test_every_recipe_command_is_valid_sh(os_name, label, command):
    parsed = subprocess.run(["sh", "-n", "-c", command], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
    checked = subprocess.run(["shellcheck", "-s", "sh", "-f", "gcc", "-"], input=command,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def test_shellcheck_catches_a_typo_in_a_recipe_command():
    """The check above is a real one: a broken quote in the dnf loop is caught."""
    command = recipes.AmazonLinux2023().install_packages(["nginx"]).replace('"$err"', '"$err',
                                                                             1)
    checked = subprocess.run(["shellcheck", "-s", "sh", "-f", "gcc", "-"], input=command,
                             capture_output=True, text=True)
    assert checked.returncode != 0


def apt_known(names):
    """Those of names this machine's apt has a package record for."""
    shown = subprocess.run(["apt-cache", "show", "--no-all-versions", *names],
                           capture_output=True, text=True).stdout
    return {line.split(":", 1)[1].strip() for line in shown.splitlines()
            if line.startswith("Package:")}


def test_debian_package_names_exist():
    if not apt_known(["apt"]):
        pytest.skip("this machine's apt has no package lists: run apt-get update")
    recipe = recipes.Debian13()
    names = set(recipe.base_packages) | {recipe.git_package}
    names |= {n for broker in recipe.broker_packages.values() for n in broker}
    assert sorted(names - TRIXIE_ONLY - apt_known(names - TRIXIE_ONLY)) == []
    # The Python packages are those of the interpreter the steps run.
    python = Path(recipes.PYTHON).name
    assert TRIXIE_ONLY <= names and all(n.startswith(python) for n in TRIXIE_ONLY)


def test_amazon_linux_package_names_are_the_ones_it_ships():
    recipe = recipes.AmazonLinux2023()
    assert set(recipe.base_packages) == AL2023_PACKAGES
    # Valkey, not redis6 (end of life 2025-08-31); the broker URL stays redis://.
    assert recipe.broker_packages == {"redis": ("valkey",)}
    assert recipe.broker_service("redis") == "valkey.service"
    assert recipe.redis_conf() == "/etc/valkey/valkey.conf"
    assert params.BROKER_URLS["redis"].startswith("redis://")
    # p11-kit reads anchors directly in this directory only.
    assert recipe.ca_anchor_dir == "/etc/pki/ca-trust/source/anchors"


# ------------------------------------------------------------------------ stub commands


def stub(bin_dir, name, script):
    """An executable ``name`` in bin_dir running the sh ``script``."""
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def run_with_stubs(bin_dir, command):
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env,
                          timeout=30)


@pytest.fixture
def fast_al2023():
    recipe = recipes.AmazonLinux2023()
    recipe.dnf_delay = 0
    return recipe


def fake_dnf(tmp_path, *answers):
    """A stub dnf answering the nth call with answers[n] = (status, stderr); the last
    answer repeats. Calls are counted in tmp_path/calls."""
    cases = "".join(f"  {i + 1}) echo {q(err)} >&2; exit {status} ;;\n"
                    for i, (status, err) in enumerate(answers[:-1]))
    status, err = answers[-1]
    stub(tmp_path, "dnf", f"echo \"$*\" >> {tmp_path}/calls\n"
                          f"n=$(wc -l < {tmp_path}/calls)\n"
                          f"case $n in\n{cases}  *) echo {q(err)} >&2; exit {status} ;;\nesac\n")


def q(text):
    return "'" + text.replace("'", "'\\''") + "'"


def calls(tmp_path):
    return (tmp_path / "calls").read_text().splitlines()


def test_dnf_is_retried_while_the_rpm_database_is_locked(tmp_path, fast_al2023):
    fake_dnf(tmp_path, (1, RPM_LOCK), (1, RPM_LOCK), (0, ""))
    result = run_with_stubs(tmp_path, fast_al2023.install_packages(["nginx", "valkey"]))
    assert result.returncode == 0, result.stderr
    assert calls(tmp_path) == ["install -y nginx valkey"] * 3
    assert "dnf is busy" in result.stderr
    assert "try 2 of 30" in result.stderr and "try 3 of 30" in result.stderr


def test_dnf_retries_are_bounded(tmp_path, fast_al2023):
    fast_al2023.dnf_tries = 3
    fake_dnf(tmp_path, (1, RPM_LOCK))
    result = run_with_stubs(tmp_path, fast_al2023.install_packages(["nginx"]))
    assert result.returncode == 1
    assert len(calls(tmp_path)) == 3
    assert RPM_LOCK in result.stderr and "still busy after 3 tries" in result.stderr


def test_a_real_dnf_failure_stops_at_once(tmp_path, fast_al2023):
    fake_dnf(tmp_path, (1, "Error: Unable to find a match: python3.13"))
    result = run_with_stubs(tmp_path, fast_al2023.install_packages(["python3.13"]))
    assert result.returncode == 1 and len(calls(tmp_path)) == 1
    assert "Unable to find a match: python3.13" in result.stderr
    assert "busy" not in result.stderr


@pytest.mark.parametrize("status,stderr,expected", [
    (0, "", "available"),
    (1, "Error: No matching Packages to list", "missing"),
    (1, "Error: Failed to download metadata for repo 'amazonlinux'", "unknown"),
])
def test_amazon_linux_python_query(tmp_path, status, stderr, expected):
    fake_dnf(tmp_path, (status, stderr))
    result = run_with_stubs(tmp_path, recipes.AmazonLinux2023().python_query())
    assert result.stdout.strip() == expected
    assert calls(tmp_path) == ["-q list --available python3.13"]


@pytest.mark.parametrize("candidate,lists,expected", [
    ("3.13.5-2", True, "available"),
    ("(none)", True, "missing"),
    ("(none)", False, "unknown"),  # a new instance that has not fetched its lists yet
])
def test_debian_python_query(tmp_path, candidate, lists, expected):
    recipe = recipes.Debian13()
    recipe.apt_lists = str(tmp_path / "lists")
    (tmp_path / "lists").mkdir()
    if lists:
        (tmp_path / "lists" / "deb.debian.org_debian_dists_trixie_main_binary-amd64_Packages"
         ).write_text("")
    stub(tmp_path, "apt-cache", f"echo 'python3.13:'; echo '  Installed: (none)'; "
                                f"echo '  Candidate: {candidate}'\n")
    result = run_with_stubs(tmp_path, recipe.python_query())
    assert result.stdout.strip() == expected


# ------------------------------------------------------------------------ preflight


def preflight_ctx(tmp_path, project, os_name, **answers):
    broker = "redis" if os_name == "al2023" else "rabbitmq"
    ctx = make_ctx(tmp_path, project, os=os_name, broker=broker)
    ctx.ssh.reply("getenforce", facts(**answers))
    return ctx, preflight.Preflight(host_base.Target(ctx, project))


def test_preflight_comes_right_after_the_login_and_changes_nothing(tmp_path, project):
    ctx, step = preflight_ctx(tmp_path, project, "al2023", python="installed",
                              selinux="Permissive")
    names = [s.name for s in host.steps(ctx, project)]
    assert names[:2] == ["host: ssh", "host: preflight"]
    change = step.plan(ctx, step.read(ctx))
    assert change.action == "keep"
    assert change.details == ["python3.13 installed; SELinux permissive"]
    assert len(ctx.ssh.commands) == 1  # the read: no change is ever applied


def test_preflight_read_runs_in_a_real_shell(tmp_path, project):
    ctx, step = preflight_ctx(tmp_path, project, "al2023")
    step.read(ctx)
    stub(tmp_path, "getenforce", "echo Enforcing\n")
    fake_dnf(tmp_path, (0, ""))
    out = run_with_stubs(tmp_path, ctx.ssh.commands[0]).stdout
    assert host_base.parse_facts(out)["selinux"] == "Enforcing"
    assert host_base.parse_facts(out)["python"] in ("installed", "available")


def test_preflight_refuses_an_ami_without_python_313(tmp_path, project):
    ctx, step = preflight_ctx(tmp_path, project, "al2023", python="missing",
                              selinux="Permissive")
    with pytest.raises(HostError) as raised:
        step.plan(ctx, step.read(ctx))
    assert "python3.13 cannot be installed" in raised.value.message
    assert ("python3.13 is not in this AMI's repository" in raised.value.hint
            and "--os debian13" in raised.value.hint)


def test_preflight_refuses_selinux_enforcing(tmp_path, project):
    ctx, step = preflight_ctx(tmp_path, project, "al2023", python="available",
                              selinux="Enforcing")
    with pytest.raises(HostError) as raised:
        step.plan(ctx, step.read(ctx))
    assert "SELinux is enforcing" in raised.value.message
    assert "setenforce 0" in raised.value.hint


def test_preflight_on_debian_without_selinux_or_package_lists(tmp_path, project):
    ctx, step = preflight_ctx(tmp_path, project, "debian13", python="unknown", selinux="")
    change = step.plan(ctx, step.read(ctx))
    assert change.action == "keep"
    assert "SELinux not present" in change.details[0]
    assert "python3.13 to be installed" in change.details[0]
