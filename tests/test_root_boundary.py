"""Root never trusts what the service user can write: over the real sshd on loopback,
with a real unprivileged service user owning ``shared/`` as the host half lays it out,
plant what that user could plant (environment lines in the .env that would run code,
programs on a PATH it names, a link in place of the media directory and of the .env),
run root's commands as ``aws_restore`` runs them, and check that nothing ran as root and
that nothing outside the app's tree changed owner or content.

The canary library and programs record the uid of every process that loads or runs
them; the canary files outside the app's tree are compared before and after.
"""

import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import pytest

from helios_aws import backup, backup_commands, rootside
from helios_aws.errors import HostError
from helios_aws.params import Deployment
from test_backup import DOMAIN, VOTERS, Site, newest, provision_bucket, take_backup
from fixtures import HELIOS_TIME_ZONE

SERVICE_USER = "helios-aws-svc"
CANARY_C = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void canary(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/loaded-%d-%d", CANARY_DIR, (int)geteuid(), (int)getpid());
    FILE *f = fopen(path, "w");
    if (f) fclose(f);
}
"""
PLANTED_PROGRAMS = ("psql", "pg_restore", "runuser", "systemctl", "tar", "cat", "mv", "env",
                    "python3", "sh")


def service_user():
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", SERVICE_USER], check=True)
        return pwd.getpwnam(SERVICE_USER)


def snapshot(root):
    """{path: (uid, gid, mode, sha256 or link target)} of everything under ``root``."""
    found = {}
    for path in sorted(Path(root).rglob("*")) + [Path(root)]:
        info = path.lstat()
        if path.is_symlink():
            content = "-> " + os.readlink(path)
        elif path.is_file():
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            content = "dir"
        found[str(path)] = (info.st_uid, info.st_gid, info.st_mode, content)
    return found


@pytest.fixture(scope="module")
def host(tmp_path_factory, postgres):
    entry = service_user()
    site = Site(tmp_path_factory.mktemp("boundary"), postgres, database="helios_boundary")
    # Outside pytest's root-only directory, so the service user can reach its own tree.
    base = Path(tempfile.mkdtemp(prefix="helios-aws-boundary-"))
    base.chmod(0o755)
    site.prefix = base / "host"
    app = site.prefix / "srv/helios"
    shared = app / "shared"
    shared.mkdir(parents=True)
    (app / "current").symlink_to(site.project)
    (app / "tools").mkdir()
    (app / "tools/helios-aws").symlink_to(sys.prefix)  # root's own helios-aws
    shutil.copytree(site.media, shared / "media")
    for path in [shared, *(shared / "media").rglob("*"), shared / "media"]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    shared.chmod(0o750)
    # The .env's directory is root's; the service user may read in it (host.ServiceUser).
    config = app / "config"
    config.mkdir()
    os.chown(config, 0, entry.pw_gid)
    config.chmod(0o750)
    site.shared, site.config_dir, site.base_dir = shared, config, base
    # What root owns outside the app's tree, with secrets in it.
    site.outside = base / "outside"
    site.outside.mkdir()
    (site.outside / "sudoers").write_text("root ALL=(ALL) ALL\n")
    (site.outside / "secret.env").write_text("DATABASE_URL=postgres://stolen@nowhere/x\n")
    for path in site.outside.iterdir():
        path.chmod(0o600)
    # The canaries: a library and programs that record who ran them.
    site.canaries = base / "canaries"
    site.canaries.mkdir(mode=0o777)
    site.canaries.chmod(0o777)
    evil = base / "evil"
    evil.mkdir()
    source = evil / "canary.c"
    source.write_text(CANARY_C)
    subprocess.run(["gcc", "-shared", "-fPIC", f'-DCANARY_DIR="{site.canaries}"', "-o",
                    evil / "canary.so", source], check=True)
    for name in PLANTED_PROGRAMS:
        program = evil / name
        program.write_text(f"#!/bin/sh\n: > {site.canaries}/ran-{name}-$(id -u)-$$\n"
                           f"PATH=/usr/bin:/bin exec {name} \"$@\"\n")
        program.chmod(0o755)
    (evil / "sitecustomize.py").write_text(
        f"import os\nopen(f'{site.canaries}/python-{{os.geteuid()}}-{{os.getpid()}}', 'w')\n")
    evil.chmod(0o755)
    site.evil = evil
    yield site
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def deployed(host, aws_env, sshd):
    (host.deploy / "state.json").unlink(missing_ok=True)
    name, _ = provision_bucket(host)
    boto3.client("s3").delete_bucket_policy(Bucket=name)  # see test_backup.py
    host.config.write_text(backup.Config(bucket=name, prefix="helios", region="us-east-1",
                                         time_zone=HELIOS_TIME_ZONE).as_json())
    config = host.prefix / "var/lib/helios-aws/backup.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(backup.Config(bucket=name, prefix="helios", region="us-east-1",
                                    service_user=SERVICE_USER,
                                    time_zone=HELIOS_TIME_ZONE).as_json())
    deployment = Deployment(domain=DOMAIN, email="elections@example.org",
                            ssh_user=sshd.user, service_user=SERVICE_USER,
                            host_prefix=str(host.prefix))
    options = {"host": sshd.host, "ssh_port": sshd.port, "ssh_key": str(sshd.client_key),
               "known_hosts": str(sshd.known_hosts)}
    return name, deployment, options


def plant_env(host, aws_env, link=None):
    """The service user's .env, with what it could add to take over root's processes
    (the file is its own; the directory is root's, so a link there is root's doing)."""
    env = host.config_dir / ".env"
    env.unlink(missing_ok=True)
    if link is not None:
        env.symlink_to(link)
    else:
        env.write_text(
            host.env_file.read_text()
            + f"AWS_ENDPOINT_URL={aws_env}\nAWS_ACCESS_KEY_ID=testing\n"
            "AWS_SECRET_ACCESS_KEY=testing\nAWS_DEFAULT_REGION=us-east-1\n"
            f"LD_PRELOAD={host.evil}/canary.so\n"
            f"PATH={host.evil}:/usr/bin:/bin\n"
            f"PYTHONPATH={host.evil}\nPYTHONSTARTUP={host.evil}/sitecustomize.py\n"
            f"BASH_ENV={host.evil}/sh\nENV={host.evil}/sh\nPGSERVICEFILE={host.evil}/x\n")
        env.chmod(0o600)
    os.chown(env, pwd.getpwnam(SERVICE_USER).pw_uid, pwd.getpwnam(SERVICE_USER).pw_gid,
             follow_symlinks=False)


def ran_as_root(host):
    """The canaries' records of a process with euid 0 (NAME-...-UID-PID)."""
    return sorted(p.name for p in host.canaries.iterdir() if p.name.split("-")[-2] == "0")


def test_planted_environment_and_links_never_reach_root(host, deployed, aws_env, tmp_path):
    bucket, deployment, options = deployed
    take_backup(host)  # (locally, as root, with the operator's own .env)
    folder, _ = newest(bucket)
    plant_env(host, aws_env)
    # The media directory replaced by a link to root's files.
    media = host.shared / "media"
    real_media = host.shared / "media-real"
    media.rename(real_media)
    media.symlink_to(host.outside)
    os.chown(media, pwd.getpwnam(SERVICE_USER).pw_uid, pwd.getpwnam(SERVICE_USER).pw_gid,
             follow_symlinks=False)
    outside = snapshot(host.outside)
    for leftover in host.canaries.iterdir():
        leftover.unlink()
    lines = []

    backup_commands.on_host(deployment, tmp_path, options, "drill", [], lines.append)
    backup_commands.restore_on_host(deployment, tmp_path, options,
                                    ["--backup", folder], lines.append)

    assert f"drill {folder}: passed" in "\n".join(lines)
    assert any(line.startswith(f"The restore of {folder} is complete") for line in lines)
    assert ran_as_root(host) == []
    assert snapshot(host.outside) == outside
    # The restore replaced the link with a new directory (made as the service user) and
    # kept the link aside, untouched.
    assert not media.is_symlink() and media.is_dir()
    assert media.stat().st_uid == pwd.getpwnam(SERVICE_USER).pw_uid
    assert all(p.stat().st_uid == pwd.getpwnam(SERVICE_USER).pw_uid for p in media.rglob("*"))
    assert (media / "voters" / "e1.csv").exists()
    kept = [p for p in host.shared.iterdir() if p.name.startswith("media.previous-")]
    assert len(kept) == 1 and kept[0].is_symlink()
    assert host.count("helios_castvote") == VOTERS


def test_a_linked_env_is_read_as_the_service_user_and_refused(host, deployed, aws_env,
                                                             tmp_path):
    _, deployment, options = deployed
    # The service user cannot put a link (or anything) in the .env's place: the directory
    # systemd reads it from, as root, is root's.
    for attempt in ([f"ln -sfn {host.outside / 'secret.env'} {host.config_dir / '.env'}"],
                    [f"mv -f {host.config_dir / '.env'} {host.config_dir / 'x'}"],
                    [f"rm -f {host.config_dir / '.env'}"]):
        tried = subprocess.run(["runuser", "-u", SERVICE_USER, "--", "sh", "-c", *attempt],
                               capture_output=True, text=True)
        assert tried.returncode != 0 and "Permission denied" in tried.stderr, attempt
    # Had root itself been led to put one there, the file is still read as the service
    # user, and refused.
    plant_env(host, aws_env, link=host.outside / "secret.env")
    outside = snapshot(host.outside)
    try:
        with pytest.raises(HostError) as refused:
            backup_commands.on_host(deployment, tmp_path, options, "drill", [], print)
    finally:
        plant_env(host, aws_env)

    assert f"Cannot read {host.config_dir / '.env'} as {SERVICE_USER}" in refused.value.message
    assert "Permission denied" in refused.value.message
    assert snapshot(host.outside) == outside


def interrupt_when(journal, phase, seconds=120):
    """SIGINT to this process (Ctrl-C here) once the server's journal reaches ``phase``."""
    def watch():
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            record = rootside.read_journal(journal) if journal.exists() else None
            if record and record["phase"] == phase:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.02)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def test_ctrl_c_here_during_a_restore_says_what_the_server_did(host, deployed, aws_env,
                                                               tmp_path):
    """Ctrl-C on the operator's side: the server goes on; this side says so, waits for
    the server to finish, and reports the server's own answer."""
    bucket, deployment, options = deployed
    plant_env(host, aws_env)
    take_backup(host)
    folder, _ = newest(bucket)
    host.psql("DELETE FROM helios_castvote WHERE id % 4 = 0")
    journal = host.prefix / rootside.JOURNAL.lstrip("/")
    journal.unlink(missing_ok=True)
    lines = []

    watcher = interrupt_when(journal, rootside.PREPARING)
    backup_commands.restore_on_host(deployment, tmp_path, options, ["--backup", folder],
                                    lines.append)
    watcher.join(timeout=5)

    said = "\n".join(lines)
    assert "Interrupted here; the server finishes or undoes the restore on its own" in said
    assert f"The restore of {folder} is complete" in said
    assert host.count("helios_castvote") == VOTERS
    assert rootside.read_journal(journal)["phase"] == rootside.DONE
