"""The host steps without a host: state in, commands out.

A fake connection records every command and answers the read scripts with canned
output, the way pyinfra tests its operations. The real shell and the real SSH server
are in test_host_ssh.py; the real systemd host in test_host_vm.py.
"""

import dataclasses
import hashlib
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import django
import pytest
from django.conf import settings

from helios_aws import configure, engine, params
from helios_aws.errors import ConfigError, HostError
from helios_aws.host import base as host_base, recipes, release, steps as host, web
from helios_aws.host.progress import ToolProgress
from helios_aws.host.ssh import Result
from helios_aws.project import Project, StaticAlias

FINGERPRINT = "SHA256:gbP8kbUm10kpXxTB43FekViDRfvIBSe9MGDDVFTSkKY"

# Rendering the deployment's files needs Django's settings, nothing from them.
if not settings.configured:
    settings.configure()
    django.setup()


class FakeConnection:
    """Stands in for ssh.Connection: records commands, answers from ``replies``.

    ``replies`` maps a substring of a command to its stdout, or to (stdout, status);
    the first matching entry (in insertion order) answers, else "" with status 0.
    """

    label = "admin@192.0.2.10:22"
    user = "admin"
    host_key_fingerprint = FINGERPRINT

    def __init__(self, replies=None):
        self.replies = dict(replies or {})
        self.commands = []
        self.files = {}
        self.staged = []

    def reply(self, needle, stdout, status=0):
        self.replies = {needle: (stdout, status), **self.replies}

    def run(self, command, sudo=False, check=True, input=None, timeout=None, step=None,
            on_line=None):
        self.commands.append(command)
        stdout, status = "", 0
        for needle, answer in self.replies.items():
            if needle in command:
                stdout, status = answer if isinstance(answer, tuple) else (answer, 0)
                break
        for line in stdout.splitlines() if on_line else ():
            on_line(line)
        if check and status:
            raise HostError(f"`{command}` failed with exit status {status}.")
        return Result(command, status, stdout, "")

    def put_files(self, files, mode=0o644, owner="root", group=None, step=None):
        for path, data in files.items():
            self.files[str(path)] = (data, mode, owner)

    def stage(self, data):
        self.staged.append(data)
        return f"/tmp/helios-aws.test/{len(self.staged)}"

    def close(self):
        pass

    @property
    def changes(self):
        """The commands after the last read (reads start with "cd /" or are queries)."""
        return [c for c in self.commands if not c.startswith("cd /\n")]


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "helios-server"
    root.mkdir()
    (root / "manage.py").write_text("print('manage')\n")
    (root / "settings.py").write_text("DEBUG = False\n")
    (root / "uv.lock").write_text("version = 1\n")
    (root / "helios").mkdir()
    (root / "helios" / "media").mkdir()
    (root / "helios" / "media" / "logo.png").write_bytes(b"\x89PNG")
    return Project(root=root, wsgi="wsgi:application", celery_app="helios",
                   static=(StaticAlias("/static/helios/", "helios/media"),),
                   dependency_source="uv", python="3.13", default_from_email="",
                   login_systems=frozenset({"password"}))


def make_ctx(tmp_path, project, options=None, **fields):
    values = {"domain": "vote.example.org", "email": "elections@example.org",
              "os": "debian13", "auth_systems": "password", **fields}
    deployment = params.build([values])
    out_dir = tmp_path / "deploy"
    configure.configure(deployment, project, out_dir)
    ctx = engine.Context(deployment, out_dir, options=dict(options or {}))
    ctx.ssh = FakeConnection()
    return ctx


@pytest.fixture
def ctx(tmp_path, project):
    return make_ctx(tmp_path, project)


def target(ctx, project):
    return host_base.Target(ctx, project)


def run_step(step, ctx):
    """read + plan, and apply when the plan is not keep; returns (change, outcome)."""
    current = step.read(ctx)
    change = step.plan(ctx, current)
    if change.action == engine.KEEP:
        return change, engine.UNCHANGED
    return change, step.apply(ctx, current, change)


def facts(**values):
    return "".join(f"{k}={v}\0" for k, v in values.items())


# ------------------------------------------------------------------------ the list


def test_step_list_for_debian_with_uv_and_rabbitmq(ctx, project):
    names = [s.name for s in host.steps(ctx, project)]
    assert names == [
        "host: ssh", "host: preflight", "host: broker configuration", "host: packages", "host: uv",
        "host: root's helios-aws", "host: service user and directories", "host: postgresql",
        "host: broker",
        "host: .env", "host: release", "host: migrate", "host: switch release",
        "host: systemd units", "host: nginx site (HTTP)", "host: certificate",
        "host: nginx site (HTTPS)", "host: certificate renewal", "host: liveness",
        "host: nightly backup", "host: election seals",
    ]


def test_step_list_for_al2023_with_pip_and_a_ca_bundle(tmp_path, project):
    project = Project(**{**project.__dict__, "dependency_source": "pip"})
    ctx = make_ctx(tmp_path, project, {"ca_bundle": "/x.pem"}, os="al2023")
    names = [s.name for s in host.steps(ctx, project)]
    assert "host: uv" not in names and "host: broker configuration" not in names
    assert names[1:3] == ["host: preflight", "host: trusted CA certificates"]


def test_a_project_needing_a_newer_python_is_refused(ctx, project):
    project = Project(**{**project.__dict__, "python": "3.14"})
    with pytest.raises(ConfigError, match="requires Python 3.14"):
        host.steps(ctx, project)


def test_al2023_with_rabbitmq_is_refused_with_the_reason(tmp_path, project):
    ctx = make_ctx(tmp_path, project, os="al2023", broker="rabbitmq")
    with pytest.raises(ConfigError, match="no Erlang or RabbitMQ"):
        host.steps(ctx, project)


def test_amazon_linux_2_is_refused_by_the_parameters():
    with pytest.raises(ConfigError, match="end of support"):
        params.build([{"os": "al2"}])


# ------------------------------------------------------------------------ ssh / OS


def test_connect_accepts_the_deployments_os(ctx, project):
    ctx.ssh.reply("os-release", facts(id="debian", version="13", name="Debian GNU/Linux 13"))
    change, outcome = run_step(host.Connect(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED
    assert FINGERPRINT in change.details[0]


def test_connect_refuses_another_os(ctx, project):
    ctx.ssh.reply("os-release", facts(id="amzn", version="2023", name="Amazon Linux 2023"))
    with pytest.raises(HostError, match="runs Amazon Linux 2023"):
        run_step(host.Connect(target(ctx, project)), ctx)


def test_connect_refuses_amazon_linux_2_with_the_end_of_support(ctx, project):
    ctx.ssh.reply("os-release", facts(id="amzn", version="2", name="Amazon Linux 2"))
    with pytest.raises(HostError) as error:
        run_step(host.Connect(target(ctx, project)), ctx)
    assert "2026-06-30" in error.value.hint


# ------------------------------------------------------------------------ CA certificates

CERT = "-----BEGIN CERTIFICATE-----\nMIIBfake{}\n-----END CERTIFICATE-----"


def test_ca_bundle_is_split_one_certificate_a_file_and_trusted(tmp_path, project):
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(f"{CERT.format(1)}\n{CERT.format(2)}\n{CERT.format(1)}\n")
    ctx = make_ctx(tmp_path, project, {"ca_bundle": str(bundle)})
    change, _ = run_step(host.TrustCA(target(ctx, project)), ctx)
    anchor = "/usr/local/share/ca-certificates/helios-aws"
    assert change.action == engine.CREATE
    assert sorted(ctx.ssh.files) == [f"{anchor}/helios-aws-000.crt", f"{anchor}/helios-aws-001.crt"]
    assert ctx.ssh.commands[-2:] == [
        f"mkdir -p -- {anchor} && rm -f -- {anchor}/helios-aws-*.crt",
        "update-ca-certificates >/dev/null"]


def test_al2023_anchors_are_files_directly_in_the_anchors_directory(tmp_path, project):
    """p11-kit ignores subfolders of the anchors directory: ours are plain files there,
    named so that only they are ever read back or removed."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(CERT.format(1))
    ctx = make_ctx(tmp_path, project, {"ca_bundle": str(bundle)}, os="al2023", broker="redis")
    run_step(host.TrustCA(target(ctx, project)), ctx)
    anchors = "/etc/pki/ca-trust/source/anchors"
    assert list(ctx.ssh.files) == [f"{anchors}/helios-aws-000.pem"]
    assert ctx.ssh.commands[-2:] == [
        f"mkdir -p -- {anchors} && rm -f -- {anchors}/helios-aws-*.pem",
        "update-ca-trust extract"]


def test_ca_anchor_commands_touch_only_our_own_files(tmp_path, project):
    """The read and the clean-up, run by a real shell in a directory that also holds
    the system's and another tool's anchors."""
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    others = {"system-root.pem": "theirs", "corp-proxy.pem": "theirs too"}
    for name, text in {**others, "helios-aws-000.pem": "ours", "helios-aws-001.pem": "ours 2"
                       }.items():
        (anchors / name).write_text(text)
    recipe = recipes.AmazonLinux2023()
    recipe.ca_anchor_dir = str(anchors)
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(CERT.format(1))
    ctx = make_ctx(tmp_path, project, {"ca_bundle": str(bundle)}, os="al2023", broker="redis")
    step = host.TrustCA(target(ctx, project))
    step.target.recipe = recipe
    step.read(ctx)
    read = subprocess.run(["sh", "-c", ctx.ssh.commands[0]], capture_output=True, text=True)
    assert sorted(line.split()[1] for line in read.stdout.splitlines()) == [
        f"{anchors}/helios-aws-000.pem", f"{anchors}/helios-aws-001.pem"]
    step.apply(ctx, {}, engine.Change(engine.UPDATE))
    subprocess.run(["sh", "-c", ctx.ssh.commands[1]], check=True)
    assert sorted(p.name for p in anchors.iterdir()) == sorted(others)


def test_ca_bundle_already_trusted_is_a_no_op(tmp_path, project):
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(CERT.format(1))
    ctx = make_ctx(tmp_path, project, {"ca_bundle": str(bundle)})
    ctx.ssh.reply("sha256sum ", f"{sha(CERT.format(1) + chr(10))}  "
                                "/usr/local/share/ca-certificates/helios-aws/helios-aws-000.crt\n")
    _, outcome = run_step(host.TrustCA(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED
    assert len(ctx.ssh.commands) == 1


def test_ca_bundle_without_certificates_is_refused(tmp_path, project):
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("not a certificate")
    ctx = make_ctx(tmp_path, project, {"ca_bundle": str(bundle)})
    with pytest.raises(ConfigError, match="no PEM certificate"):
        run_step(host.TrustCA(target(ctx, project)), ctx)


# ------------------------------------------------------------------------ packages


def test_packages_installs_only_what_is_missing(ctx, project):
    ctx.ssh.reply("dpkg-query", "python3.13\nnginx\ngcc\n")
    change, _ = run_step(host.Packages(target(ctx, project)), ctx)
    assert change.action == engine.CREATE
    install = ctx.ssh.commands[-1]
    assert "install -y -q --no-install-recommends" in install
    # dpkg left half-way by an interrupted run is finished first; apt's lock is waited for.
    assert "dpkg --configure -a" in install and "DPkg::Lock::Timeout" in install
    assert "python3.13-venv" in install and "rabbitmq-server" in install
    assert " nginx" not in install and " gcc" not in install
    assert "-o APT::Status-Fd=1 " in install


# What apt prints with -o APT::Status-Fd=1 (the status lines as apt 2.6 writes them),
# interleaved with its and dpkg's own output.
APT_OUTPUT = """Reading package lists...
The following NEW packages will be installed:
  nginx nginx-common
0 upgraded, 2 newly installed, 0 to remove and 0 not upgraded.
dlstatus:1:0.0000:Retrieving file 1 of 2
dlstatus:2:67.0924:Retrieving file 2 of 2
pmstatus:dpkg-exec:0.0000:Running dpkg
pmstatus:nginx-common:0.0000:Preparing nginx-common (all)
Selecting previously unselected package nginx-common.
pmstatus:nginx-common:11.1111:Unpacking nginx-common (all)
pmstatus:nginx:33.3333:Unpacking nginx (amd64)
pmstatus:nginx-common:50.0000:Configuring nginx-common (all)
Setting up nginx-common (1.26.3-3) ...
pmstatus:nginx-common:60.0000:Installed nginx-common (all)
"""


def test_packages_pass_on_what_apt_is_doing(ctx, project):
    ctx.ssh.reply("dpkg-query", "")
    ctx.ssh.reply("apt-get", APT_OUTPUT)
    seen = []
    ctx.progress = seen.append

    run_step(host.Packages(target(ctx, project)), ctx)

    assert seen == ["downloading 1/2 packages", "downloading 2/2 packages",
                    "installing 1/2 packages", "installing 2/2 packages",
                    "configuring 1/2 packages"]


@pytest.mark.parametrize("tool, lines, expected", [
    ("apt, total not printed yet", ["pmstatus:libpq5:4.1:Unpacking libpq5 (amd64)",
                                    "pmstatus:libpq5:5.0:Installing libpq5 (amd64)",
                                    "pmstatus:gcc:6.2:Unpacking gcc (amd64)"],
     "installing 2 packages"),
    ("apt, a package with its architecture", ["pmstatus:libc6:i386:3.0:Unpacking libc6:i386",
                                              "pmstatus:libc6:amd64:4.0:Unpacking libc6"],
     "installing 2 packages"),
    ("apt, a status line glued to dpkg's", ["(Reading database ... 5%pmstatus:gcc:6.2:"
                                            "Unpacking gcc (amd64)"], "installing 1 package"),
    ("dnf 4 download", ["(3/80): libpq-15.6-1.amzn2023.0.1.x86_64.rpm  2.0 MB/s | 212 kB"
                        "     00:00"], "downloading 3/80 packages"),
    ("dnf 4 transaction", ["  Preparing        :                                   1/1",
                           "  Installing       : libpq-15.6-1.amzn2023.0.1.x86_64   12/80"],
     "installing 12/80 packages"),
    ("dnf 4 verification", ["  Verifying        : nginx-1:1.24.0-1.amzn2023.x86_64   79/80"],
     "verifying 79/80 packages"),
    ("dnf 5", ["[12/80] Installing libpq-0:15.6-1.x86_64  100% | 10.0 MiB/s |  1.2 MiB"],
     "installing 12/80 packages"),
    ("uv resolving", ["Resolved 80 packages in 3ms"], "resolved 80 packages"),
    ("uv downloading", ["Resolved 80 packages in 3ms", "Downloading cryptography (4.2MiB)"],
     "downloading cryptography"),
    ("uv creating the virtualenv", ["Using CPython 3.13.5 interpreter at: /usr/bin/python3.13",
                                    "Creating virtual environment at: /srv/helios/releases/"
                                    "20261202-ab12/.venv"], "creating the virtualenv"),
    ("uv building", ["   Building python-ldap==3.4.4"], "building python-ldap==3.4.4"),
    ("uv built", ["   Building python-ldap==3.4.4", "      Built python-ldap==3.4.4"],
     "built python-ldap==3.4.4"),
    ("uv installing", ["Prepared 78 packages in 41.02s", "Installed 80 packages in 212ms"],
     "installed 80 packages"),
    ("pip collecting", ["Collecting Django==5.2.1 (from -r requirements.txt (line 1))",
                        "  Downloading django-5.2.1-py3-none-any.whl.metadata (4.1 kB)",
                        "Collecting celery==5.4.0 (from -r requirements.txt (line 2))"],
     "collecting 2 packages"),
    ("pip building", ["Building wheels for collected packages: python-ldap",
                      "  Building wheel for python-ldap (pyproject.toml): started"],
     "building python-ldap"),
    ("pip installing", ["Installing collected packages: pytz, kombu, celery, Django"],
     "installing 4 packages"),
    ("anything else", ["Get:1 http://deb.debian.org/debian trixie/main amd64 gcc", ""], None),
])
def test_progress_is_read_from_each_tool(tool, lines, expected):
    said = []
    reader = ToolProgress(said.append)
    for line in lines:
        reader.feed(line)

    assert (said[-1] if said else None) == expected


def test_packages_all_present_is_a_no_op(ctx, project):
    wanted = recipes.Debian13().packages("rabbitmq")
    ctx.ssh.reply("dpkg-query", "\n".join(wanted))
    _, outcome = run_step(host.Packages(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED and len(ctx.ssh.commands) == 1


def test_al2023_packages_use_dnf_and_valkey(tmp_path, project):
    ctx = make_ctx(tmp_path, project, os="al2023", broker="redis")
    ctx.ssh.reply("rpm -q", "nginx\n")
    run_step(host.Packages(target(ctx, project)), ctx)
    install = ctx.ssh.commands[-1]
    dnf = next(line for line in install.splitlines() if "dnf install" in line).split()
    # Not quiet: dnf's transaction lines are the step's progress.
    assert "-q" not in dnf
    for name in ("python3.13-devel", "openldap-devel", "cyrus-sasl-devel",
                 "postgresql15-server", "valkey", "certbot", "util-linux"):
        assert name in dnf
    assert "nginx" not in dnf and "redis6" not in dnf


def test_git_deploys_add_git(tmp_path, project):
    ctx = make_ctx(tmp_path, project, {"git_url": "https://git.example.org/helios.git"})
    run_step(host.Packages(target(ctx, project)), ctx)
    assert "git" in ctx.ssh.commands[-1].split()


# ------------------------------------------------------------------------ uv


def test_uv_is_installed_into_its_own_venv_from_wheels_only(ctx, project):
    change, _ = run_step(host.UvTool(target(ctx, project)), ctx)
    assert change.action == engine.CREATE
    assert ctx.ssh.commands[-1] == (
        "umask 022; /usr/bin/python3.13 -m venv /srv/helios/tools/uv && "
        "PIP_CERT=/etc/ssl/certs/ca-certificates.crt /srv/helios/tools/uv/bin/pip install "
        "-q --disable-pip-version-check --only-binary=:all: 'uv>=0.8'")


def test_uv_present_is_a_no_op(ctx, project):
    ctx.ssh.reply("uv-*.dist-info", "version=0.9.5\n")
    change, outcome = run_step(host.UvTool(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED and change.details == ["uv 0.9.5"]
    assert len(ctx.ssh.commands) == 1


def test_root_has_its_own_helios_aws_installed_from_wheels_only(ctx, project):
    """What root runs on the server (drills, restores) never comes from a release, which
    the service user builds."""
    step = host.RootTool(target(ctx, project))
    change, _ = run_step(step, ctx)
    assert change.action == engine.CREATE
    name, data, digest = step.wanted()
    assert ctx.ssh.staged == [data]
    script = ctx.ssh.commands[-1].splitlines()
    assert script[:5] == ["set -e", "umask 022", "cd /", "rm -rf -- /srv/helios/tools/helios-aws",
                          "/usr/bin/python3.13 -m venv -- /srv/helios/tools/helios-aws"]
    pip = ("PIP_CERT=/etc/ssl/certs/ca-certificates.crt /srv/helios/tools/helios-aws/bin/pip "
           "install -q --disable-pip-version-check --only-binary=:all:")
    assert f"{pip} --no-deps -- /srv/helios/tools/helios-aws/{name}" in script
    assert f"{pip} -- boto3" in script
    assert script[-1] == f"printf '%s\\n' {digest} > /srv/helios/tools/helios-aws/installed"

    ctx.ssh.reply("/srv/helios/tools/helios-aws/installed", facts(installed=digest))
    _, outcome = run_step(host.RootTool(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED


def test_uv_version_is_read_from_its_metadata(tmp_path, ctx, project):
    """The read script, run by a real shell over a fake tool directory."""
    home = tmp_path / "srv" / "helios" / "tools" / "uv"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "uv").write_text("#!/bin/sh\n")
    (home / "bin" / "uv").chmod(0o755)
    (home / "lib" / "python3.13" / "site-packages" / "uv-0.9.5.dist-info").mkdir(parents=True)
    ctx2 = make_ctx(tmp_path / "other", project, host_prefix=str(tmp_path))
    step = host.UvTool(target(ctx2, project))
    step.read(ctx2)
    script = ctx2.ssh.commands[0]
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout
    assert host_base.parse_facts(out) == {"version": "0.9.5"}


# ------------------------------------------------------------------------ user, directories

DIRS_OK = {
    "dir./srv/helios": "root root 755", "dir./srv/helios/releases": "root root 755",
    "dir./srv/helios/config": "root helios 750",
    "dir./srv/helios/shared": "helios helios 750",
    "dir./srv/helios/shared/media": "helios helios 750",
    "dir./var/www/acme": "root root 755", "dir./var/lib/helios-aws": "root root 755",
    "dir./var/lib/helios-aws/releases": "root root 755",
    "dir./var/cache/helios-aws": "root root 755",
    "dir./var/cache/helios-aws/uv": "helios helios 700",
    "dir./var/cache/helios-aws/pip": "helios helios 700",
}


def test_service_user_is_created_with_the_layout(ctx, project):
    change, _ = run_step(host.ServiceUser(target(ctx, project)), ctx)
    assert change.action == engine.CREATE
    command = ctx.ssh.commands[-1]
    assert command.startswith("useradd --system --user-group --home-dir /srv/helios "
                              "--no-create-home --shell /usr/sbin/nologin -- helios && ")
    # shared/ is the service user's: what is inside it is made by that user, never by
    # root (a link planted there would hand its target over).
    assert "runuser -u helios -- env -i PATH=/usr/bin:/bin sh -c 'mkdir -p -m 750 -- \"$1\" " \
        "&& chmod 750 -- \"$1\"' sh /srv/helios/shared/media" in command
    assert "/srv/helios/shared/media" not in command.replace(
        "sh -c 'mkdir -p -m 750 -- \"$1\" && chmod 750 -- \"$1\"' sh /srv/helios/shared/media",
        "")
    assert "install -d -o helios -g helios -m 750 -- /srv/helios/shared &&" in command
    assert "install -d -o root -g root -m 755 -- /srv/helios/releases" in command
    # The installs run as the service user, with caches of its own.
    assert "install -d -o helios -g helios -m 700 -- /var/cache/helios-aws/uv" in command


def test_service_user_and_layout_in_place_is_a_no_op(ctx, project):
    ctx.ssh.reply("getent passwd", facts(user="helios:/srv/helios:/usr/sbin/nologin",
                                         **DIRS_OK))
    _, outcome = run_step(host.ServiceUser(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED


def test_a_cache_root_filled_is_started_afresh_for_the_service_user(ctx, project):
    """Before the installs ran as the service user, root's uv filled the cache."""
    ctx.ssh.reply("getent passwd", facts(
        user="helios:/srv/helios:/usr/sbin/nologin",
        **{**DIRS_OK, "dir./var/cache/helios-aws/uv": "root root 755"}))
    run_step(host.ServiceUser(target(ctx, project)), ctx)
    assert "rm -rf -- /var/cache/helios-aws/uv && install -d -o helios -g helios -m 700 -- " \
        "/var/cache/helios-aws/uv" in ctx.ssh.commands[-1]
    assert "rm -rf -- /var/cache/helios-aws/pip" not in ctx.ssh.commands[-1]


@pytest.mark.parametrize("found", ["helios:/home/helios:/bin/bash",
                                   "helios:/srv/helios:/bin/sh", "helios:/:/usr/sbin/nologin"])
def test_an_account_of_that_name_this_tool_did_not_make_is_refused(ctx, project, found):
    """Another account's name (a person's, a service's) would hand Helios its powers."""
    ctx.ssh.reply("getent passwd", facts(user=found, **DIRS_OK))
    with pytest.raises(HostError, match="already has a user helios that this tool did not"):
        run_step(host.ServiceUser(target(ctx, project)), ctx)
    assert len(ctx.ssh.commands) == 1


@pytest.mark.parametrize("kind", ["symbolic link", "regular file"])
def test_a_media_directory_replaced_by_the_service_user_is_refused(ctx, project, kind):
    """shared/ is the service user's: a link there is never followed nor handed over."""
    planted = {**DIRS_OK, "dir./srv/helios/shared/media": f"helios helios 777 {kind}"}
    ctx.ssh.reply("getent passwd", facts(user="helios:/srv/helios:/usr/sbin/nologin",
                                         **planted))
    with pytest.raises(HostError, match=f"/srv/helios/shared/media is a {kind}, not a "
                                        "directory"):
        run_step(host.ServiceUser(target(ctx, project)), ctx)
    assert len(ctx.ssh.commands) == 1


def test_a_directory_with_wrong_mode_is_fixed_without_touching_the_user(ctx, project):
    wrong = {**DIRS_OK, "dir./srv/helios/shared": "helios helios 777"}
    ctx.ssh.reply("getent passwd", facts(user="helios:/srv/helios:/usr/sbin/nologin", **wrong))
    change, _ = run_step(host.ServiceUser(target(ctx, project)), ctx)
    assert change.action == engine.UPDATE
    assert "useradd" not in ctx.ssh.commands[-1]


# ------------------------------------------------------------------------ PostgreSQL

PG_OK = {"enabled.postgresql": "enabled", "active.postgresql": "active",
         "db": "role helios UTF8", "peer": "helios"}


def test_postgres_from_scratch_creates_role_and_database(ctx, project):
    states = iter([facts(**{**PG_OK, "db": "none none", "peer": ""}),
                   facts(**{**PG_OK, "db": "none none", "peer": ""}),
                   facts(**PG_OK)])
    ctx.ssh.run_orig = ctx.ssh.run

    def run(command, **kwargs):
        if command.startswith("cd /\n"):
            ctx.ssh.commands.append(command)
            return Result(command, 0, next(states), "")
        return ctx.ssh.run_orig(command, **kwargs)

    ctx.ssh.run = run
    change, _ = run_step(host.Postgres(target(ctx, project)), ctx)
    assert change.action == engine.CREATE
    sql = [shlex.split(c)[-1] for c in ctx.ssh.changes if "psql" in c and "SELECT 1" not in c]
    assert sql == [
        'CREATE ROLE "helios" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE',
        "CREATE DATABASE helios OWNER \"helios\" ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' "
        "LC_CTYPE 'C.UTF-8' TEMPLATE template0"]
    assert "systemctl enable --now -- postgresql" in ctx.ssh.changes[0]
    assert not any("hba" in c for c in ctx.ssh.changes)


def test_al2023_postgres_is_initialised_first(tmp_path, project):
    ctx = make_ctx(tmp_path, project, os="al2023")
    ctx.ssh.reply("cd /\n", facts(**PG_OK))
    step = host.Postgres(target(ctx, project))
    step.apply(ctx, {}, engine.Change(engine.UPDATE))
    assert ctx.ssh.changes[0].startswith(
        "cd / && [ -f /var/lib/pgsql/data/PG_VERSION ] || postgresql-setup --initdb")


def test_postgres_superuser_role_is_demoted(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{**PG_OK, "db": "superuser helios UTF8"}))
    change, _ = run_step(host.Postgres(target(ctx, project)), ctx)
    assert "take superuser away from role helios" in change.details
    assert any('ALTER ROLE "helios" NOSUPERUSER' in c for c in ctx.ssh.changes)
    assert not any("CREATE" in c for c in ctx.ssh.changes)


def test_postgres_in_place_is_a_no_op(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**PG_OK))
    _, outcome = run_step(host.Postgres(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED and len(ctx.ssh.commands) == 1


# ------------------------------------------------------------------------ broker


def test_broker_configuration_is_written_before_the_package(ctx, project):
    change, _ = run_step(host.BrokerConfig(target(ctx, project)), ctx)
    assert change.action == engine.UPDATE
    assert ctx.ssh.files["/etc/rabbitmq/conf.d/90-helios-aws.conf"][0] == \
        recipes.RABBITMQ_FILES["/etc/rabbitmq/conf.d/90-helios-aws.conf"]
    assert "listeners.tcp.default = 127.0.0.1:5672" in \
        ctx.ssh.files["/etc/rabbitmq/conf.d/90-helios-aws.conf"][0]
    assert "ListenStream=127.0.0.1:4369" in \
        ctx.ssh.files["/etc/systemd/system/epmd.socket.d/helios-aws.conf"][0]
    assert ctx.ssh.commands[-1] == "systemctl daemon-reload"


def test_changed_broker_configuration_restarts_a_running_broker(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"active.rabbitmq-server.service": "active"}))
    run_step(host.BrokerConfig(target(ctx, project)), ctx)
    assert ctx.ssh.commands[-1] == (
        "systemctl daemon-reload && systemctl stop rabbitmq-server.service && "
        "systemctl stop epmd.service epmd.socket && "
        "systemctl start epmd.socket rabbitmq-server.service")


def test_broker_configuration_in_place_is_a_no_op(ctx, project):
    hashes = {f"sha.{p}": sha(t) for p, t in recipes.RABBITMQ_FILES.items()}
    ctx.ssh.reply("cd /\n", facts(**hashes))
    _, outcome = run_step(host.BrokerConfig(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED


def test_broker_is_enabled_and_started(ctx, project):
    ctx.ssh.reply("cd /\n", facts(listen="127.0.0.1:5672"))
    change, _ = run_step(host.Broker(target(ctx, project)), ctx)
    assert change.details == ["enable rabbitmq-server.service", "start rabbitmq-server.service"]
    assert ctx.ssh.commands[1] == ("systemctl enable -- rabbitmq-server.service >/dev/null "
                                   "2>&1 && systemctl start -- rabbitmq-server.service")


def test_broker_listening_beyond_loopback_is_restarted_and_checked(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"enabled.rabbitmq-server.service": "enabled",
                                     "active.rabbitmq-server.service": "active",
                                     "listen": "0.0.0.0:25672 127.0.0.1:5672"}))
    with pytest.raises(HostError, match="still listens on 0.0.0.0:25672"):
        run_step(host.Broker(target(ctx, project)), ctx)
    assert "systemctl stop rabbitmq-server.service" in ctx.ssh.commands[1]


def test_broker_on_loopback_is_a_no_op(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"enabled.rabbitmq-server.service": "enabled",
                                     "active.rabbitmq-server.service": "active",
                                     "listen": "127.0.0.1:5672 [::1]:5672"}))
    _, outcome = run_step(host.Broker(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED


def test_valkey_gets_a_loopback_bind_line(tmp_path, project):
    ctx = make_ctx(tmp_path, project, os="al2023", broker="redis")
    ctx.ssh.reply("cd /\n", facts(**{"enabled.valkey.service": "enabled",
                                     "active.valkey.service": "active",
                                     "listen": "127.0.0.1:6379", "bind": "bind 0.0.0.0"}))
    run_step(host.Broker(target(ctx, project)), ctx)
    assert ctx.ssh.commands[1] == ("echo 'bind 127.0.0.1 -::1' >> /etc/valkey/valkey.conf && "
                                   "systemctl enable -- valkey.service >/dev/null 2>&1 && "
                                   "systemctl restart valkey.service")


# ------------------------------------------------------------------------ .env


def test_env_file_is_uploaded_private_to_the_service_user(ctx, project):
    change, _ = run_step(host.EnvFile(target(ctx, project)), ctx)
    assert change.action == engine.CREATE
    assert ctx.ssh.staged == [(ctx.out_dir / ".env").read_text()]
    # Put in place by root, by a rename in root's own directory (config/), so no link
    # the service user planted can stand in for the file systemd reads as root.
    write = ctx.ssh.commands[-2]
    assert write == ("install -m 600 -o helios -g helios -T -- /tmp/helios-aws.test/1 "
                     "/srv/helios/config/.env.helios-aws-new && mv -fT -- "
                     "/srv/helios/config/.env.helios-aws-new /srv/helios/config/.env && "
                     "rm -f -- /tmp/helios-aws.test/1")
    assert "systemctl restart" in ctx.ssh.commands[-1]


def test_env_file_unchanged_is_a_no_op(ctx, project):
    text = (ctx.out_dir / ".env").read_text()
    ctx.ssh.reply("cd /\n", facts(sha=sha(text), stat="helios 600"))
    _, outcome = run_step(host.EnvFile(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED and not ctx.ssh.staged


def test_env_file_readable_by_others_is_rewritten(ctx, project):
    text = (ctx.out_dir / ".env").read_text()
    ctx.ssh.reply("cd /\n", facts(sha=sha(text), stat="helios 644"))
    change, _ = run_step(host.EnvFile(target(ctx, project)), ctx)
    assert change.action == engine.UPDATE and "install -m 600" in ctx.ssh.commands[-2]


# ------------------------------------------------------------------------ release


def release_id(ctx, project):
    return host.Release(target(ctx, project)).source(ctx)["id"]


def test_new_release_is_uploaded_and_installed_with_uv(ctx, project):
    change, _ = run_step(host.Release(target(ctx, project)), ctx)
    ident = release_id(ctx, project)
    assert change.action == engine.CREATE and ident in change.details[0]
    script = ctx.ssh.commands[-1]
    rel = re.search(r"mkdir -- (/srv/helios/releases/\d{14}-" + ident + ")\n", script).group(1)
    state = "/var/lib/helios-aws/releases/" + rel.rsplit("/", 1)[1]
    assert ctx.facts["host_release_dir"] == rel
    assert f"tar -xzf /tmp/helios-aws.test/2 -C {rel} --no-same-owner" in script
    assert f"UV_PROJECT_ENVIRONMENT={rel}/.venv" in script
    assert "UV_PYTHON=/usr/bin/python3.13" in script
    assert "UV_CACHE_DIR=/var/cache/helios-aws/uv" in script
    # Copies, not hard links into the cache: the release becomes root's, the cache stays the
    # service user's.
    assert "UV_LINK_MODE=copy" in script
    assert "/srv/helios/tools/uv/bin/uv sync --frozen --no-dev" in script
    assert re.search(r"uv pip install --python \S+/.venv/bin/python -- "
                     rf"{state}/helios_aws-[\w.]+-py3-none-any.whl gunicorn django-environ\n",
                     script)
    assert "\nln -s ../../shared/media media\n" in script
    # The project's code is built and compiled by the service user, in a release it owns
    # only meanwhile; root's own records of the release are outside it.
    as_user = "runuser -u helios -- env HOME=/srv/helios "
    lines = script.splitlines()
    handed = lines.index(f"chown -R -h -- helios:helios {rel}")
    back = lines.index(f"chown -R -h -- root:root {rel}")
    install = [i for i, line in enumerate(lines) if "uv sync" in line or "compileall" in line]
    assert handed < min(install) and max(install) < back
    assert all(lines[i].startswith(as_user) for i in install)
    assert lines[install[0]].count(as_user) == 2  # uv sync, then uv pip install
    assert lines[-1] == f"touch -- {state}/installed"
    # The wheel is staged first, then the project's files.
    assert ctx.ssh.staged[0][:2] == b"PK" and ctx.ssh.staged[1][:2] == b"\x1f\x8b"


def test_release_with_redis_adds_the_redis_package(tmp_path, project):
    ctx = make_ctx(tmp_path, project, os="al2023")
    run_step(host.Release(target(ctx, project)), ctx)
    assert "gunicorn django-environ redis\n" in ctx.ssh.commands[-1]


def test_release_with_requirements_uses_pip(tmp_path, project):
    (project.root / "uv.lock").unlink()
    (project.root / "requirements.txt").write_text("django\n")
    project = Project(**{**project.__dict__, "dependency_source": "pip"})
    ctx = make_ctx(tmp_path, project)
    run_step(host.Release(target(ctx, project)), ctx)
    script = ctx.ssh.commands[-1]
    assert "runuser -u helios -- env HOME=/srv/helios /usr/bin/python3.13 -m venv " in script
    assert re.search(r"runuser -u helios -- env HOME=/srv/helios PIP_CERT=\S+ "
                     r"PIP_CACHE_DIR=/var/cache/helios-aws/pip \S+/.venv/bin/pip install "
                     r"--disable-pip-version-check -r requirements.txt -- ", script)
    assert "uv sync" not in script


def test_release_from_git_clones_the_resolved_commit(tmp_path, project):
    ctx = make_ctx(tmp_path, project, {"git_url": "https://git.example.org/helios.git",
                                       "git_ref": "v2"})
    commit = "0123456789abcdef0123456789abcdef01234567"
    ctx.ssh.reply("git ls-remote", f"{commit}\trefs/tags/v2\n")
    change, _ = run_step(host.Release(target(ctx, project)), ctx)
    assert "https://git.example.org/helios.git v2 (0123456789ab)" in change.details[0]
    script = ctx.ssh.commands[-1]
    assert f"git fetch -q --depth 1 -- https://git.example.org/helios.git {commit}" in script
    assert "git ls-remote -- https://git.example.org/helios.git refs/heads/v2 refs/tags/v2 " \
        "'refs/tags/v2^{}'" in ctx.ssh.commands[0]
    assert "if [ -f uv.lock ]; then" in script
    assert len(ctx.ssh.staged) == 1  # only the wheel: no local files travel


def test_git_url_credentials_are_on_no_command_line_and_in_no_log(tmp_path, project):
    token = "ghp_s3cretT0kenValue"
    ctx = make_ctx(tmp_path, project, {"git_url": f"https://deploy:{token}@git.example.org/h.git",
                                       "git_ref": "v2"})
    commit = "0123456789abcdef0123456789abcdef01234567"
    ctx.ssh.reply("ls-remote", f"{commit}\trefs/tags/v2\n")
    change, _ = run_step(host.Release(target(ctx, project)), ctx)
    ctx.log.info("options: %s", ctx.options)
    assert "https://git.example.org/h.git v2" in change.details[0]
    fetches = [c for c in ctx.ssh.commands if "ls-remote" in c or "git fetch" in c]
    assert len(fetches) == 2
    for command in ctx.ssh.commands:
        assert token not in command and "deploy:" not in command
    # git reads the credentials from a private staged file named in its environment.
    assert all("GIT_CONFIG_GLOBAL=/tmp/helios-aws.test/" in c for c in fetches)
    headers = [s for s in ctx.ssh.staged if b"extraHeader" in s]
    assert headers and all(token not in s.decode() for s in headers)
    log = (ctx.out_dir / "provision.log").read_text()
    assert "options:" in log and token not in log


def test_installed_release_is_a_no_op(ctx, project):
    ident = release_id(ctx, project)
    ctx.ssh.reply("cd /\n", facts(ready=f"20260101000000-{ident}"))
    _, outcome = run_step(host.Release(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED and not ctx.ssh.staged
    assert ctx.facts["host_release_dir"] == f"/srv/helios/releases/20260101000000-{ident}"


def test_half_installed_release_is_removed_and_redone(ctx, project):
    ident = release_id(ctx, project)
    ctx.ssh.reply("cd /\n", facts(partial=f"20260101000000-{ident}"))
    run_step(host.Release(target(ctx, project)), ctx)
    assert (f"rm -rf -- /srv/helios/releases/20260101000000-{ident} "
            f"/var/lib/helios-aws/releases/20260101000000-{ident}\n") in ctx.ssh.commands[-1]


def test_changed_code_makes_a_new_release(ctx, project):
    before = release_id(ctx, project)
    (project.root / "helios" / "views.py").write_text("x = 1\n")
    ctx.facts.clear()
    assert release_id(ctx, project) != before


# ------------------------------------------------------------------------ migrate


def test_migrate_runs_as_the_service_user_with_the_env_file(ctx, project):
    ctx.facts["host_release_dir"] = "/srv/helios/releases/20260101000000-abc"
    ctx.ssh.reply("cd /\n", facts(db="d41d8", done=""))
    change, _ = run_step(host.Migrate(target(ctx, project)), ctx)
    assert change.action == engine.UPDATE
    rel = "/srv/helios/releases/20260101000000-abc"
    assert ctx.ssh.commands[1] == (
        f"cd {rel} && runuser -u helios -- env HELIOS_ENV_FILE=/srv/helios/config/.env "
        "DJANGO_SETTINGS_MODULE=helios_aws.settings_overrides.production "
        f"{rel}/.venv/bin/python manage.py migrate --no-input")
    assert ctx.ssh.commands[-1] == ("printf '%s\\n' d41d8 > "
                                    "/var/lib/helios-aws/releases/20260101000000-abc/migrated")


def test_migrated_release_is_a_no_op(ctx, project):
    ctx.facts["host_release_dir"] = "/srv/helios/releases/20260101000000-abc"
    ctx.ssh.reply("cd /\n", facts(db="4f2a", done="4f2a"))
    _, outcome = run_step(host.Migrate(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED and len(ctx.ssh.commands) == 1


# ------------------------------------------------------------------------ switch


def rel_name(day, letter):
    return f"202601{day:02d}000000-{letter * 16}"


OLD, NEW = rel_name(1, "a"), rel_name(2, "b")


def test_switch_points_current_at_the_new_release_then_prunes(ctx, project):
    ctx.facts["host_release_dir"] = f"/srv/helios/releases/{NEW}"
    ctx.ssh.reply("cd /\n", facts(current=f"releases/{OLD}"))
    change, _ = run_step(host.Switch(target(ctx, project)), ctx)
    assert change.details == [f"current -> releases/{NEW} (was releases/{OLD})"]
    script = ctx.ssh.commands[-1].splitlines()
    assert script[1:3] == [
        f"ln -sfn -- releases/{NEW} /srv/helios/current.helios-aws-new",
        "mv -fT -- /srv/helios/current.helios-aws-new /srv/helios/current"]
    assert "systemctl restart" in script[3]
    assert script[5].endswith(f"| sort -rz | grep -zvxF -- {NEW} | grep -zvxF -- {OLD} "
                              "| tail -zn +2 | xargs -0r rm -rf --")


def test_switch_already_done_is_a_no_op(ctx, project):
    ctx.facts["host_release_dir"] = f"/srv/helios/releases/{NEW}"
    ctx.ssh.reply("cd /\n", facts(current=f"releases/{NEW}"))
    _, outcome = run_step(host.Switch(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED


@pytest.mark.parametrize("answer", ["/etc", "releases/../../etc", "releases/x\ny",
                                    f"releases/{NEW}/..", "releases/-rf"])
def test_a_current_link_that_is_not_a_release_is_refused(ctx, project, answer):
    """What readlink answers is checked before it reaches grep and rm."""
    ctx.facts["host_release_dir"] = f"/srv/helios/releases/{NEW}"
    ctx.ssh.reply("cd /\n", facts(current=answer))
    with pytest.raises(HostError, match="not at a release this tool made"):
        run_step(host.Switch(target(ctx, project)), ctx)
    assert len(ctx.ssh.commands) == 1  # the read only


@pytest.mark.parametrize("answer", ["../../etc", "x; rm -rf /", "-rf", "2026010100000-"])
def test_a_release_name_not_of_the_release_form_is_refused(ctx, project, answer):
    ident = release_id(ctx, project)
    ctx.ssh.reply("cd /\n", facts(partial=answer + ident))
    with pytest.raises(HostError, match="not a release's name"):
        run_step(host.Release(target(ctx, project)), ctx)
    assert not any("rm -rf" in c for c in ctx.ssh.commands)


def test_pruning_keeps_the_configured_number_of_releases(tmp_path, project):
    """The prune, run by a real shell over real directories: only names of the release
    form are candidates, whatever else the directory holds, and this tool's records of the
    removed releases go with them."""
    ctx = make_ctx(tmp_path, project, {"keep_releases": 3},
                   host_prefix=str(tmp_path / "server"))
    lay = host_base.Target(ctx, project).layout
    releases = Path(str(lay.releases))
    state = tmp_path / "server" / "var" / "lib" / "helios-aws" / "releases"
    names = [rel_name(day, letter) for day, letter in zip(range(1, 6), "abcde")]
    for name in names:
        (releases / name).mkdir(parents=True)
        (state / name).mkdir(parents=True)
    strangers = ["keep me", "-rf", "a\nb", "20260101000000-zz"]
    for name in strangers:
        (releases / name).mkdir()
    (state / rel_name(6, "f")).mkdir()  # a record whose release is already gone
    ctx.facts["host_release_dir"] = str(releases / names[4])
    step = host.Switch(target(ctx, project))
    step.apply(ctx, {"current": f"releases/{names[3]}"}, engine.Change(engine.UPDATE))
    script = ctx.ssh.commands[-1].splitlines()
    prune = "\n".join(["set -e"] + script[4:])  # from `cd releases` on
    subprocess.run(["sh", "-c", prune], check=True)
    assert sorted(p.name for p in releases.iterdir()) == sorted(names[2:] + strangers)
    assert sorted(p.name for p in state.iterdir()) == names[2:]


# ------------------------------------------------------------------------ units

UNITS_RUNNING = {f"{k}.{u}": v for u in host_base.APP_UNITS
                 for k, v in (("enabled", "enabled"), ("active", "active"))}


def unit_hashes(ctx):
    return {f"sha./etc/systemd/system/{p.name}": sha(p.read_text())
            for p in (ctx.out_dir / "systemd").iterdir()}


def test_units_are_installed_enabled_and_started(ctx, project):
    change, _ = run_step(host.Units(target(ctx, project)), ctx)
    assert change.action == engine.CREATE
    assert sorted(ctx.ssh.files) == sorted(
        f"/etc/systemd/system/{n}" for n in configure.ARTIFACTS if n.startswith("systemd/")
        for n in [n.split("/")[1]])
    assert ctx.ssh.commands[-1].splitlines() == [
        "set -e", "systemctl daemon-reload",
        "systemctl enable gunicorn.socket gunicorn.service helios-celery.service >/dev/null 2>&1",
        "systemctl try-restart gunicorn.service helios-celery.service",
        "systemctl start gunicorn.socket gunicorn.service helios-celery.service"]


def test_units_in_place_and_running_is_a_no_op(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**unit_hashes(ctx), **UNITS_RUNNING))
    _, outcome = run_step(host.Units(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED and not ctx.ssh.files


def test_changed_socket_unit_stops_the_service_first(ctx, project):
    hashes = {**unit_hashes(ctx), "sha./etc/systemd/system/gunicorn.socket": "old"}
    ctx.ssh.reply("cd /\n", facts(**hashes, **UNITS_RUNNING))
    run_step(host.Units(target(ctx, project)), ctx)
    assert list(ctx.ssh.files) == ["/etc/systemd/system/gunicorn.socket"]
    assert "systemctl stop gunicorn.service gunicorn.socket" in ctx.ssh.commands[-1]
    assert "try-restart" not in ctx.ssh.commands[-1]


def test_a_stopped_worker_is_started(ctx, project):
    running = {**UNITS_RUNNING, "active.helios-celery.service": "failed"}
    ctx.ssh.reply("cd /\n", facts(**unit_hashes(ctx), **running))
    change, _ = run_step(host.Units(target(ctx, project)), ctx)
    assert change.details == ["start helios-celery.service"]
    assert not ctx.ssh.files


def test_the_old_env_in_shared_goes_once_the_units_read_the_new_one(ctx, project):
    """A deployment made before the .env moved to root's config/: the units now name the
    new file, and the old one (in shared/, which the service user writes, so perhaps a
    link by now) is removed as that user after the units restart."""
    hashes = {**unit_hashes(ctx), "sha./etc/systemd/system/gunicorn.service": "old"}
    ctx.ssh.reply("cd /\n", facts(**hashes, **UNITS_RUNNING, legacy_env="yes"))
    change, _ = run_step(host.Units(target(ctx, project)), ctx)
    assert change.details == ["install gunicorn.service", "remove /srv/helios/shared/.env "
                              "(the units read /srv/helios/config/.env)"]
    assert "EnvironmentFile=/srv/helios/config/.env" in ctx.ssh.files[
        "/etc/systemd/system/gunicorn.service"][0]
    steps = ctx.ssh.commands[-1].splitlines()
    assert steps[-1] == ("runuser -u helios -- env -i PATH=/usr/bin:/bin rm -f -- "
                         "/srv/helios/shared/.env")
    assert steps.index("systemctl try-restart gunicorn.service") < len(steps) - 1


# ------------------------------------------------------------------------ nginx

NGINX_UP = {"enabled.nginx.service": "enabled", "active.nginx.service": "active"}


def site(ctx, kind):
    return (ctx.out_dir / "nginx" / f"helios-{kind}.conf").read_text()


def test_http_site_comes_first(ctx, project):
    change, _ = run_step(host.NginxSite(target(ctx, project), https=False), ctx)
    assert change.action == engine.CREATE
    assert ctx.ssh.staged == [site(ctx, "http").encode()]
    assert "nginx -t" in ctx.ssh.commands[-1]


def test_http_site_is_not_put_back_over_the_https_one(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"sha./etc/nginx/conf.d/helios.conf": sha(site(ctx, "https")),
                                     "cert": "yes"}, **NGINX_UP))
    _, outcome = run_step(host.NginxSite(target(ctx, project), https=False), ctx)
    assert outcome == engine.UNCHANGED


def test_https_site_needs_the_certificate(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"sha./etc/nginx/conf.d/helios.conf": sha(site(ctx, "http"))},
                                  **NGINX_UP))
    with pytest.raises(HostError, match="No certificate"):
        run_step(host.NginxSite(target(ctx, project), https=True), ctx)
    assert not ctx.ssh.staged


def test_https_site_replaces_the_http_one(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"sha./etc/nginx/conf.d/helios.conf": sha(site(ctx, "http")),
                                     "cert": "yes"}, **NGINX_UP))
    change, _ = run_step(host.NginxSite(target(ctx, project), https=True), ctx)
    assert change.action == engine.UPDATE
    assert ctx.ssh.staged == [site(ctx, "https").encode()]


def test_https_site_in_place_is_a_no_op(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"sha./etc/nginx/conf.d/helios.conf": sha(site(ctx, "https")),
                                     "cert": "yes"}, **NGINX_UP))
    _, outcome = run_step(host.NginxSite(target(ctx, project), https=True), ctx)
    assert outcome == engine.UNCHANGED


def test_the_distributions_default_site_is_disabled_even_under_a_site_in_place(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"sha./etc/nginx/conf.d/helios.conf": sha(site(ctx, "https")),
                                     "cert": "yes", "default_site": "yes"}, **NGINX_UP))
    change, _ = run_step(host.NginxSite(target(ctx, project), https=True), ctx)
    assert change.action == engine.UPDATE
    assert any("default site /etc/nginx/sites-enabled/default" in d for d in change.details)
    assert "rm -f /etc/nginx/sites-enabled/default" in ctx.ssh.commands[-1]


def test_every_site_closes_connections_for_other_names(ctx, project):
    for kind in ("http", "https"):
        text = site(ctx, kind)
        assert "listen 80 default_server;" in text and "return 444;" in text
    assert "listen 443 ssl default_server;" in site(ctx, "https")
    assert "ssl_reject_handshake on;" in site(ctx, "https")


@pytest.fixture
def fake_nginx_host(tmp_path):
    """A directory with stand-ins for nginx and systemctl on PATH: `nginx -t` fails when
    the site holds the word "broken"; systemctl calls are recorded."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    site = tmp_path / "conf.d" / "helios.conf"
    site.parent.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "nginx").write_text(
        f"#!/bin/sh\nif grep -q broken {site}; then echo 'nginx: [emerg] unknown directive "
        "\"broken\"' >&2; exit 1; fi\necho 'nginx: configuration file test is successful' >&2\n")
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\necho \"$*\" >> {calls}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    # install(1) with -o root needs root; the test runs the script as it runs on a host.
    if os.geteuid() != 0:
        pytest.skip("install -o root needs root")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    return site, calls, env


def test_a_site_nginx_rejects_never_replaces_the_good_one(fake_nginx_host, tmp_path):
    site, calls, env = fake_nginx_host
    site.write_text("server { good }\n")
    staged = tmp_path / "staged"
    staged.write_text("server { broken }\n")
    result = subprocess.run(["sh", "-c", web.install_site_script(site, staged,
                                                                 tmp_path / "default")],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "unknown directive" in result.stderr and "previous one is kept" in result.stderr
    assert site.read_text() == "server { good }\n"
    assert not calls.exists()  # nginx was not reloaded
    assert sorted(p.name for p in site.parent.iterdir()) == ["helios.conf"]


def test_a_good_site_is_installed_and_nginx_reloaded(fake_nginx_host, tmp_path):
    site, calls, env = fake_nginx_host
    site.write_text("server { old }\n")
    staged = tmp_path / "staged"
    staged.write_text("server { new }\n")
    available = tmp_path / "sites-available-default"
    available.write_text("server { listen 80 default_server; }\n")
    default = tmp_path / "sites-enabled-default"
    default.symlink_to(available)
    subprocess.run(["sh", "-c", web.install_site_script(site, staged, default)], env=env,
                   check=True)
    assert site.read_text() == "server { new }\n"
    # The distribution's default site is disabled; its file stays (ln -s enables it).
    assert not default.is_symlink() and available.is_file()
    assert calls.read_text().splitlines()[0] == "enable nginx"
    assert sorted(p.name for p in site.parent.iterdir()) == ["helios.conf"]


def test_a_rejected_first_site_is_removed(fake_nginx_host, tmp_path):
    site, calls, env = fake_nginx_host
    staged = tmp_path / "staged"
    staged.write_text("broken\n")
    result = subprocess.run(["sh", "-c", web.install_site_script(site, staged,
                                                                 tmp_path / "default")],
                            env=env, capture_output=True)
    assert result.returncode == 1 and not site.exists()


# ------------------------------------------------------------------------ certificate


def test_certificate_is_requested_through_the_webroot(tmp_path, project):
    ctx = make_ctx(tmp_path, project, {"server": "https://10.0.2.2:14000/dir"})
    change, _ = run_step(host.Certificate(target(ctx, project)), ctx)
    assert change.action == engine.CREATE
    assert ctx.ssh.commands[-1] == (
        "cd / && REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt certbot certonly "
        "--non-interactive --agree-tos --webroot --webroot-path=/var/www/acme "
        "--domains=vote.example.org --cert-name=vote.example.org "
        "--email=elections@example.org --server=https://10.0.2.2:14000/dir")


def test_certificate_from_another_server_is_replaced(tmp_path, project):
    ctx = make_ctx(tmp_path, project, {"server": "https://acme.example.net/dir"})
    ctx.ssh.reply("cd /\n", facts(cert="yes", server="https://10.0.2.2:14000/dir"))
    change, _ = run_step(host.Certificate(target(ctx, project)), ctx)
    assert change.action == engine.UPDATE
    assert ctx.ssh.commands[-1].endswith("--server=https://acme.example.net/dir --force-renewal")


def test_certificate_present_is_a_no_op(ctx, project):
    ctx.ssh.reply("cd /\n", facts(cert="yes", server="https://acme.example.net/dir"))
    _, outcome = run_step(host.Certificate(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED


def test_renewal_enables_our_timer_and_proves_a_dry_run(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"enabled.certbot.timer": "enabled", "proof": "abc"}))
    change, _ = run_step(host.Renewal(target(ctx, project)), ctx)
    assert change.details == ["enable and start helios-certbot-renew.timer",
                              "disable certbot.timer (helios-certbot-renew.timer replaces it)",
                              "certbot renew --dry-run"]
    script = ctx.ssh.commands[-1].splitlines()
    assert script[2] == "systemctl disable --now -- certbot.timer >/dev/null 2>&1 || true"
    assert script[3] == "systemctl enable --now -- helios-certbot-renew.timer >/dev/null 2>&1"
    assert script[4].endswith("certbot renew --dry-run --non-interactive "
                              "--no-random-sleep-on-renew --cert-name=vote.example.org")
    assert script[5].endswith("> /var/lib/helios-aws/renew-dry-run")


def test_renewal_already_proven_is_a_no_op(ctx, project):
    ctx.ssh.reply("cd /\n", facts(**{"enabled.helios-certbot-renew.timer": "enabled",
                                     "active.helios-certbot-renew.timer": "active",
                                     "enabled.certbot.timer": "disabled",
                                     "proof": "abc", "done": "abc"}))
    _, outcome = run_step(host.Renewal(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED


# ------------------------------------------------------------------------ liveness


def test_liveness_answering_is_a_no_op(ctx, project):
    ctx.ssh.reply("curl", "200")
    change, outcome = run_step(host.Liveness(target(ctx, project)), ctx)
    assert outcome == engine.UNCHANGED
    assert ctx.ssh.commands == [
        "curl -sS -o /dev/null -w '%{http_code}' --max-time 60 "
        "--cacert /etc/letsencrypt/live/vote.example.org/fullchain.pem "
        "--resolve vote.example.org:443:127.0.0.1 "
        "https://vote.example.org/helios/elections/params"]


def test_liveness_waits_for_a_starting_site_and_changes_nothing(ctx, project):
    ctx.ssh.reply("curl", "502")
    change, outcome = run_step(host.Liveness(target(ctx, project)), ctx)
    assert change.action == engine.UPDATE and outcome == engine.UNCHANGED
    assert ctx.ssh.commands[-1].startswith("for i in $(seq 36); do")
    assert "journalctl -u gunicorn.service" in ctx.ssh.commands[-1]


# ------------------------------------------------------------------------ release files


def test_project_files_skip_secrets_caches_and_the_output_dir(tmp_path):
    root = tmp_path / "p"
    for rel in ("manage.py", ".env", "helios/x.py", "helios/__pycache__/x.pyc",
                ".venv/bin/python", "deploy/state.json", ".git/HEAD", "helios/.env"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    (root / ".git").rename(root / "not-git")  # a plain directory, not a checkout
    files = release.project_files(root, exclude=[root / "deploy"])
    assert files == ["helios/.env", "helios/x.py", "manage.py", "not-git/HEAD"]


def test_project_files_of_a_git_checkout_are_the_tracked_ones(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path / "p"
    root.mkdir()
    (root / "manage.py").write_text("x")
    (root / "untracked.py").write_text("x")
    (root / "deploy").mkdir()
    (root / "deploy" / "deployment.json").write_text("{}")
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "manage.py", "deploy/deployment.json"], check=True)
    assert release.project_files(root, exclude=[root / "deploy"]) == ["manage.py"]


def test_digest_ignores_timestamps_but_not_the_executable_bit(tmp_path):
    (tmp_path / "a.py").write_text("x")
    first = release.digest(tmp_path, ["a.py"])
    os.utime(tmp_path / "a.py", (0, 0))
    assert release.digest(tmp_path, ["a.py"]) == first
    (tmp_path / "a.py").chmod(0o755)
    assert release.digest(tmp_path, ["a.py"]) != first


def test_wheel_is_deterministic_and_installable_metadata(tmp_path):
    import zipfile
    name, data = release.wheel()
    assert release.wheel() == (name, data)
    assert re.fullmatch(r"helios_aws-[\w.]+-py3-none-any\.whl", name)
    path = tmp_path / name
    path.write_bytes(data)
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = wheel.read(info).decode()
    assert "helios_aws/host/steps.py" in names
    assert "helios_aws/templates/helios_aws/gunicorn.service" in names
    assert not any("__pycache__" in n for n in names)
    assert "Name: helios-aws" in metadata and "Requires-Dist: django-environ" in metadata
    assert "extra ==" not in metadata


def test_archive_holds_the_files_owned_by_root(tmp_path):
    import io
    import tarfile
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o775)
    (tmp_path / "a.txt").write_text("a")
    with tarfile.open(fileobj=io.BytesIO(release.archive(tmp_path, ["a.txt", "run.sh"]))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert (members["run.sh"].mode, members["a.txt"].mode) == (0o755, 0o644)
    assert {m.uname for m in members.values()} == {"root"}


def test_no_host_to_connect_to_is_explained(tmp_path, project):
    ctx = make_ctx(tmp_path, project)
    ctx.ssh = None
    with pytest.raises(HostError, match="no server to connect to"):
        host_base.connection(ctx)


def test_trusted_fingerprints_come_from_the_flag_and_the_aws_half(ctx):
    ctx.options["trust_host_key"] = f"{FINGERPRINT},SHA256:{'B' * 43}"
    ctx.facts["host_fingerprints"] = ["SHA256:" + "A" * 43]
    assert host_base.pinned_fingerprints(ctx) == [FINGERPRINT, "SHA256:" + "B" * 43,
                                             "SHA256:" + "A" * 43]


def test_a_malformed_fingerprint_is_refused(ctx):
    ctx.options["trust_host_key"] = "MD5:aa:bb"
    with pytest.raises(HostError, match="not an OpenSSH SHA256"):
        host_base.pinned_fingerprints(ctx)


def test_layout_paths_match_the_rendered_units(ctx, project):
    unit = (ctx.out_dir / "systemd" / "gunicorn.service").read_text()
    assert "EnvironmentFile=/srv/helios/config/.env" in unit
    assert "WorkingDirectory=/srv/helios/current" in unit
    assert Path(host_base.Target(ctx, project).layout.env_file).as_posix() == "/srv/helios/config/.env"


# ------------------------------------------------------------------------ hostile values

MARKER = "HOSTILE-CANARY"


def hostile(canary_dir, spaces=True):
    """A value that runs `touch` (leaving a canary file) if a shell ever expands it."""
    touch = f"touch {canary_dir}/{MARKER}" if spaces else f"touch${{IFS}}{canary_dir}/{MARKER}"
    text = f"$({touch})`{touch}`"
    return text + (f"; {touch}; '\"\n-x {touch} #" if spaces else f";{touch};'\"")


def outside_single_quotes(script):
    """The text of a shell script that is not inside single quotes (what the shell may
    expand: double-quoted text counts, as `$(...)` runs there). Quoting starts afresh
    inside a command substitution, even within double quotes."""
    kept, i, double, outer = [], 0, False, []
    while i < len(script):
        char = script[i]
        if char == "\\":
            i += 2
            continue
        if char == "'" and not double:
            i = script.index("'", i + 1) + 1
            kept.append(" ")
            continue
        if script.startswith("$(", i):
            outer.append(double)
            double = False
        elif char == ")" and outer and not double:
            double = outer.pop()
        elif char == '"':
            double = not double
        kept.append(char)
        i += 1
    return "".join(kept)


class RecordingShell(FakeConnection):
    """Records every command; in the read phase runs it for real in ``sh`` (as --plan
    would on the server), except the remote git query, which is answered."""

    def __init__(self, cwd, ref):
        super().__init__()
        self.cwd, self.ref, self.phase, self.peer_reads = cwd, ref, "read", 0

    def run(self, command, sudo=False, check=True, input=None, timeout=None, step=None,
            on_line=None):
        self.commands.append(command)
        if "git ls-remote" in command:
            return Result(command, 0, f"{'c' * 40}\trefs/heads/{self.ref}\n", "")
        if self.phase == "read":
            done = subprocess.run(["sh", "-c", command], cwd=self.cwd, capture_output=True,
                                  text=True, timeout=60)
            return Result(command, done.returncode, done.stdout, done.stderr)
        if command.startswith("cd /\n"):  # a step reading again: peer access comes second
            self.peer_reads += "SELECT current_user" in command
            return Result(command, 0, facts(db="superuser nobody UTF8", bootstrap="postgres",
                                             peer="" if self.peer_reads < 2 else self.user_),
                          "")
        return Result(command, 0, "", "")


HOSTILE_SETUPS = {
    "debian13, local files, uv, rabbitmq, a CA bundle": dict(os="debian13", git=False),
    "al2023, a git checkout, redis": dict(os="al2023", git=True),
}


@pytest.mark.parametrize("setup", HOSTILE_SETUPS, ids=list(HOSTILE_SETUPS))
def test_every_step_quotes_every_value_and_runs_nothing_a_value_names(tmp_path, setup):
    """Every host step, read and applied, with hostile paths, names, URLs, refs and project
    files (validation bypassed where it would refuse them: the quoting must hold anyway):
    every script parses under sh and bash, a hostile value only ever stands inside single
    quotes, and the read scripts, run for real, never run what a value names."""
    setup = HOSTILE_SETUPS[setup]
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    value, word = hostile(canaries), hostile(canaries, spaces=False)
    name = f"$(touch {MARKER})`touch {MARKER}`; '\"\n-x"  # a file name: no slashes
    root = tmp_path / f"project {name}"
    root.mkdir()
    for file in ("manage.py", "uv.lock", "requirements.txt", f"-file {name}"):
        (root / file).write_text("x\n")
    project = Project(root=root, wsgi="wsgi:application", celery_app="helios",
                      static=(StaticAlias("/static/", "server_ui/media"),),
                      dependency_source="pip" if setup["git"] else "uv", python="3.13",
                      default_from_email="", login_systems=frozenset({"password"}))
    bundle = tmp_path / f"ca {name}.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    options = {"server": f"https://acme.example/{value}", "ca_bundle": str(bundle),
               "keep_releases": 3}
    if setup["git"]:
        options.update(git_url=f"https://127.0.0.1:1/{word}", git_ref=f"v1{word}")
    ctx = make_ctx(tmp_path, project, options, os=setup["os"])
    ctx.deployment = dataclasses.replace(
        ctx.deployment, host_prefix=f"{tmp_path}/server {value}", app_dir=f"/srv/{value}",
        domain=f"vote.example.org{value}", email=f"{value}@example.org",
        service_user=f"helios{value}")
    shell = ctx.ssh = RecordingShell(tmp_path, f"v1{word}")
    shell.user_ = ctx.deployment.service_user
    ctx.facts["backup_bucket"] = f"helios-backups-{word}"
    chosen = host.steps(ctx, project)
    assert len(chosen) >= 17
    for step in chosen:
        shell.phase = "read"
        current = step.read(ctx)
        shell.phase = "apply"
        current = {**(current if isinstance(current, dict) else {}), "cert": "yes",
                   "partial": rel_name(1, "a"), "current": f"releases/{rel_name(1, 'b')}"}
        change = engine.Change(engine.UPDATE)
        if type(step).apply is engine.Step.apply:
            continue  # reads only (the login)
        if isinstance(step, host.Packages):
            step.apply(ctx, set(), change)
        elif isinstance(step, host.Liveness):
            step.apply(ctx, {"status": "", "error": ""}, change)
        else:
            step.apply(ctx, current, change)
    assert len(shell.commands) > 40
    for command in shell.commands:
        for sh in ("sh", "bash"):
            parsed = subprocess.run([sh, "-n", "-c", command], capture_output=True, text=True)
            assert parsed.returncode == 0, (sh, command, parsed.stderr)
        assert MARKER not in outside_single_quotes(command), command
        # (SC2289 flags a quoted word holding a line break: what hostile values are.)
        checked = subprocess.run(["shellcheck", "--shell=sh", "--severity=error",
                                  "--exclude=SC2289", "-"],
                                 input=command, capture_output=True, text=True)
        assert checked.returncode == 0, (command, checked.stdout)
    assert not list(canaries.iterdir())
    assert not (tmp_path / MARKER).exists() and not Path("/", MARKER).exists()


# ------------------------------------------------------------------------ options and names


@pytest.mark.parametrize("user", ["", "root", "postgres", "nginx", "www-data", "redis",
                                  "valkey", "rabbitmq", "admin", "-x", "a b"])
def test_a_system_account_or_the_login_user_is_refused_as_the_service_user(user):
    """admin is the Debian image's login user, who may sudo."""
    with pytest.raises(ConfigError, match="--service-user"):
        params.build([{"os": "debian13", "service_user": user}])


def test_the_login_user_given_to_provision_is_refused_as_the_service_user(tmp_path, project):
    ctx = make_ctx(tmp_path, project, {"ssh_user": "helios"})
    with pytest.raises(ConfigError, match="--service-user helios is refused: it is the SSH "
                                          "login user"):
        host.steps(ctx, project)


def test_a_login_that_turns_out_to_be_the_service_user_is_refused(ctx, project):
    """~/.ssh/config may name the user: the login itself is checked too."""
    ctx.ssh.user = "helios"
    ctx.ssh.reply("os-release", facts(id="debian", version="13", name="Debian GNU/Linux 13"))
    with pytest.raises(HostError, match="also the service user"):
        run_step(host.Connect(target(ctx, project)), ctx)


@pytest.mark.parametrize("url", [
    "--upload-pack=touch /tmp/x", "-u/tmp/x", "--config=core.sshCommand=x",
    "ext::sh -c touch% /tmp/x", "fd::3", "file:///etc", "/srv/helios.git", "../repo",
    "http://example.org/helios.git", "ssh://-oProxyCommand=touch% /x", "ssh://u@-oProxy/y",
    "git@example.org:-x", "https://example.org/a b", "https://example.org/a\nb",
])
def test_a_git_url_git_could_read_as_an_option_or_a_local_transport_is_refused(
        tmp_path, project, url):
    ctx = make_ctx(tmp_path, project, {"git_url": url, "git_ref": "main"})
    with pytest.raises(ConfigError, match="--git-url") as error:
        host.steps(ctx, project)
    assert "https://" in error.value.hint and "user@host:path" in error.value.hint


def test_a_refused_git_url_does_not_show_its_password(tmp_path, project):
    ctx = make_ctx(tmp_path, project, {"git_url": "http://deploy:s3cret@example.org/h.git"})
    with pytest.raises(ConfigError) as error:
        host.steps(ctx, project)
    assert "s3cret" not in str(error.value) and "http://***@example.org" in str(error.value)


@pytest.mark.parametrize("url", ["https://github.com/helios/helios-server.git",
                                 "ssh://git@example.org:2222/helios.git",
                                 "git@github.com:helios/helios-server.git"])
def test_https_ssh_and_scp_style_git_urls_are_accepted(tmp_path, project, url):
    ctx = make_ctx(tmp_path, project, {"git_url": url, "git_ref": "main"})
    assert "host: release" in [s.name for s in host.steps(ctx, project)]


@pytest.mark.parametrize("ref", ["-x", "--upload-pack=x", "a..b", "a b", "a\tb", "x.lock",
                                 "a/.b", ".x", "x/", "a//b", "x~1", "x^{}", "a:b", "a?",
                                 "a*", "a[", "a\\b", "@", "a@{1}", "a\x7f"])
def test_a_ref_git_would_not_take_as_a_name_is_refused(tmp_path, project, ref):
    ctx = make_ctx(tmp_path, project, {"git_url": "https://example.org/h.git", "git_ref": ref})
    with pytest.raises(ConfigError, match="--git-ref"):
        host.steps(ctx, project)


COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def resolve(tmp_path, project, ref, answer):
    ctx = make_ctx(tmp_path, project, {"git_url": "https://example.org/h.git",
                                       "git_ref": ref})
    ctx.ssh.reply("git ls-remote", answer)
    return host.Release(target(ctx, project)).remote_commit(ctx, "https://example.org/h.git",
                                                            ref), ctx


def test_the_ref_is_asked_for_by_its_exact_names(tmp_path, project):
    """ls-remote matches the ends of names: refs/heads/a/main is not main."""
    commit, ctx = resolve(tmp_path, project, "main",
                          f"{COMMIT_B}\trefs/heads/a/main\n{COMMIT_A}\trefs/heads/main\n"
                          f"{COMMIT_B}\trefs/remotes/origin/main\n")
    assert commit == COMMIT_A
    assert ctx.ssh.commands[-1] == ("cd / && git ls-remote -- https://example.org/h.git "
                                    "refs/heads/main refs/tags/main 'refs/tags/main^{}'")


def test_no_ref_deploys_the_remote_head_by_its_exact_name(tmp_path, project):
    commit, ctx = resolve(tmp_path, project, "HEAD", f"{COMMIT_B}\trefs/remotes/origin/HEAD\n"
                                                   f"{COMMIT_A}\tHEAD\n")
    assert commit == COMMIT_A
    assert ctx.ssh.commands[-1].endswith("git ls-remote -- https://example.org/h.git HEAD")


def test_a_name_matching_only_the_end_of_other_refs_is_not_found(tmp_path, project):
    with pytest.raises(HostError, match="has no branch or tag named 'main'"):
        resolve(tmp_path, project, "main", f"{COMMIT_B}\trefs/heads/a/main\n")


def test_an_annotated_tag_deploys_the_commit_it_points_at(tmp_path, project):
    commit, _ = resolve(tmp_path, project, "v4", f"{COMMIT_B}\trefs/tags/v4\n"
                                                 f"{COMMIT_A}\trefs/tags/v4^{{}}\n")
    assert commit == COMMIT_A


def test_a_branch_and_a_tag_of_the_same_name_are_refused(tmp_path, project):
    with pytest.raises(HostError, match="both a branch and a tag named 'v4'") as error:
        resolve(tmp_path, project, "v4", f"{COMMIT_A}\trefs/heads/v4\n"
                                         f"{COMMIT_B}\trefs/tags/v4\n")
    assert COMMIT_A in error.value.hint and COMMIT_B in error.value.hint


def test_an_answer_that_is_not_a_commit_id_is_refused(tmp_path, project):
    with pytest.raises(HostError, match="not a commit id"):
        resolve(tmp_path, project, "main", "; rm -rf /\trefs/heads/main\n")


def test_postgres_never_demotes_the_bootstrap_superuser(tmp_path, project):
    """A cluster whose bootstrap superuser has another name than postgres is guarded too:
    taking superuser away from it locks the cluster's administration."""
    ctx = make_ctx(tmp_path, project, service_user="dba")
    ctx.ssh.reply("cd /\n", facts(**{**PG_OK, "db": "superuser dba UTF8", "bootstrap": "dba"}))
    with pytest.raises(HostError, match="bootstrap superuser"):
        run_step(host.Postgres(target(ctx, project)), ctx)
    assert not any("ALTER ROLE" in c for c in ctx.ssh.commands)


def test_the_project_cannot_bring_the_names_the_release_makes(tmp_path):
    """A local virtualenv, local uploads and planted links never travel."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "manage.py").write_text("x\n")
    (root / ".helios-aws").symlink_to("/etc")
    (root / ".venv").symlink_to("/var/lib/helios-aws")
    (root / "media").mkdir()
    (root / "media" / "voters.csv").write_text("a,b\n")
    assert release.project_files(root) == ["manage.py"]


def test_a_git_checkout_with_those_names_is_refused_before_any_write(tmp_path, project):
    ctx = make_ctx(tmp_path, project, {"git_url": "https://example.org/h.git",
                                       "git_ref": COMMIT_A})
    run_step(host.Release(target(ctx, project)), ctx)
    lines = ctx.ssh.commands[-1].splitlines()
    check = next(i for i, line in enumerate(lines) if line.startswith("for n in"))
    assert "for n in .helios-aws .venv media;" in lines[check] and "exit 1" in lines[check]
    assert lines[check - 2] == "rm -rf .git"  # right after the checkout
    assert not any(w in line for line in lines[:check]
                   for w in ("install -m", "ln -s", "chown", "printf", "touch"))


HOSTILE_STATIC = {
    "no prefix": (r"^(?P<path>.*)$", "media", "second `location /`"),
    "nginx syntax": (r"^static;}/(?P<path>.*)$", "media", "not a plain URL prefix"),
    "a space": (r"^st atic/(?P<path>.*)$", "media", "not a plain URL prefix"),
    "a quote": ("^static\"/(?P<path>.*)$", "media", "not a plain URL prefix"),
    "a comment sign": (r"^st#atic/(?P<path>.*)$", "media", "not a plain URL prefix"),
    "a brace": (r"^st{atic/(?P<path>.*)$", "media", "not a plain URL prefix"),
    "nested under a hostile include": (r"^{x}/(?P<path>.*)$", "media",
                                       "not a plain URL prefix"),
    "the project root": (r"^static/(?P<path>.*)$", ".", "not a plain directory"),
    "a directory with a space": (r"^static/(?P<path>.*)$", "my media",
                                 "not a plain directory"),
    "outside the project": (r"^static/(?P<path>.*)$", "../elsewhere", "outside the project"),
}


@pytest.mark.parametrize("case", HOSTILE_STATIC, ids=list(HOSTILE_STATIC))
def test_hostile_static_patterns_in_the_urlconf_are_refused(tmp_path, case):
    """A variant of Helios's URLconf whose serve patterns would render a second
    `location /`, break out of nginx's syntax or serve outside the project."""
    import types

    from django.urls import include, re_path
    from django.views.static import serve

    from helios_aws import project as project_mod

    regex, directory, message = HOSTILE_STATIC[case]
    root = tmp_path / "helios"
    (root / directory).mkdir(parents=True, exist_ok=True)
    pattern = re_path(regex, serve, {"document_root": str(root / directory)})
    urlconf = types.ModuleType("hostile_urls")
    if case.startswith("nested"):
        inner = types.ModuleType("hostile_inner")
        inner.urlpatterns = [re_path(r"^(?P<path>.*)$", serve,
                                     {"document_root": str(root / directory)})]
        urlconf.urlpatterns = [re_path(r"^x y/", include(inner))]
    else:
        urlconf.urlpatterns = [re_path(r"^static/helios/(?P<path>.*)$", serve,
                                       {"document_root": str(root / directory)}), pattern]
    with pytest.raises(ConfigError, match=re.escape(message)):
        project_mod.static_aliases(urlconf, root=root.resolve())


@pytest.mark.parametrize("field, value", [
    ("wsgi", "wsgi:application; touch /tmp/x"), ("wsgi", "wsgi"), ("wsgi", "-x:app"),
    ("wsgi", "my wsgi:application"), ("celery_app", "helios -A x"), ("celery_app", "../x"),
    ("celery_app", "$(id)"), ("celery_app", "")])
def test_wsgi_and_celery_names_from_the_project_are_plain_names(project, field, value):
    with pytest.raises(ConfigError, match="WSGI application" if field == "wsgi"
                       else "Celery app"):
        Project(**{**project.__dict__, field: value})


def test_a_fact_with_a_line_break_cannot_pass_for_another_fact(tmp_path):
    """Facts are NUL-terminated: a file name or link target with a line break in it
    stays one value, run through a real shell."""
    script = host_base.fact("current", "printf 'releases/x\\nready=../../etc'") + \
        host_base.fact("other", "echo yes")
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout
    assert host_base.parse_facts(out) == {"current": "releases/x\nready=../../etc", "other": "yes"}


FAKE_GIT = """#!/bin/sh
# Stands in for git: the checkout plants links to a directory outside the release.
if [ "$1" = checkout ]; then
    ln -s "$OUTSIDE" .helios-aws
    ln -s "$OUTSIDE" media
    echo "print('x')" > manage.py
fi
"""


def test_a_git_checkout_planting_links_is_refused_before_root_writes_anything(tmp_path,
                                                                             project):
    """The release script of a --git-url deploy, run by a real shell (git standing in):
    the checkout's .helios-aws and media links to a directory outside stop it before any
    write through them, with the reason."""
    ctx = make_ctx(tmp_path, project, {"git_url": "https://example.org/h.git",
                                       "git_ref": COMMIT_A},
                   host_prefix=str(tmp_path / "server"))
    step = host.Release(target(ctx, project))
    step.apply(ctx, {}, engine.Change(engine.CREATE))
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "git").write_text(FAKE_GIT)
    (tmp_path / "bin" / "git").chmod(0o755)
    Path(str(step.target.layout.releases)).mkdir(parents=True)
    done = subprocess.run(["sh", "-c", ctx.ssh.commands[-1]], capture_output=True, text=True,
                          env={**os.environ, "OUTSIDE": str(outside),
                               "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"})
    assert done.returncode == 1
    assert "The project has its own top-level .helios-aws" in done.stderr
    assert list(outside.iterdir()) == []
    rel = Path(ctx.facts["host_release_dir"])
    assert rel.is_dir() and not (Path(str(step.target.release_state(rel.name))) / "installed").exists()
