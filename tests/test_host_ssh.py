"""The SSH connection against a real OpenSSH server on loopback (the rig's ``sshd``).

Host keys (pinned, known_hosts, unknown, changed), ~/.ssh/config, files put as root,
sudo, failures reported with their step, command, status and output, the
persistent shells (channels counted), and host steps that touch only files run twice.
"""

import hashlib
import json
import os
import grp
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import django
import pytest
import rig
from django.conf import settings

from helios_aws import configure, engine, params
from helios_aws.errors import ConfigError, HostError
from helios_aws.host import base as host_base, steps as host
from helios_aws.host.ssh import Connection, Result
from helios_aws.project import Project

if not settings.configured:
    settings.configure()
    django.setup()


def connect(server, **kwargs):
    options = dict(user=server.user, key_filename=str(server.client_key),
                   pinned=[server.host_key_fingerprint], ssh_config=None,
                   allow_agent=False, look_for_keys=False)
    options.update(kwargs)
    return Connection(server.host, port=server.port, **options).connect()


@pytest.fixture
def conn(sshd):
    with connect(sshd) as connection:
        yield connection


def accepted_logins(server):
    return server.process.log_tail(10_000).count("Accepted publickey")


# ------------------------------------------------------------------------ host keys


def test_a_pinned_fingerprint_lets_the_connection_in(conn, sshd):
    result = conn.run("echo hello; whoami")
    assert (result.status, result.stdout, result.stderr) == (0, f"hello\n{sshd.user}\n", "")
    assert conn.host_key_fingerprint == sshd.host_key_fingerprint


def test_a_known_hosts_entry_lets_the_connection_in(sshd):
    with connect(sshd, pinned=(), known_hosts=[sshd.known_hosts]) as connection:
        assert connection.run("true").ok


def test_an_unknown_host_key_is_refused_before_logging_in(sshd, tmp_path):
    before = accepted_logins(sshd)
    with pytest.raises(HostError) as error:
        connect(sshd, pinned=(), known_hosts=[tmp_path / "empty"])
    message = str(error.value)
    assert "is unknown" in message and "impostor" in message
    assert sshd.host_key_fingerprint in message
    assert f"--trust-host-key {sshd.host_key_fingerprint}" in error.value.hint
    assert accepted_logins(sshd) == before


def test_a_changed_host_key_is_refused_before_logging_in(sshd, sshd_new_host_key, tmp_path):
    """known_hosts remembers the first server's key for the second server's address."""
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd_new_host_key.port} {sshd.host_public_key}\n")
    before = accepted_logins(sshd_new_host_key)
    with pytest.raises(HostError) as error:
        connect(sshd_new_host_key, pinned=(), known_hosts=[known])
    assert "has CHANGED" in str(error.value) and "impostor" in str(error.value)
    assert "ssh-keygen -R" in error.value.hint
    assert accepted_logins(sshd_new_host_key) == before


def test_a_key_other_than_the_pinned_one_is_refused(sshd, sshd_new_host_key):
    with pytest.raises(HostError) as error:
        connect(sshd_new_host_key, pinned=[sshd.host_key_fingerprint],
                known_hosts=[sshd_new_host_key.known_hosts])
    message = str(error.value)
    assert "does not match" in message
    assert sshd_new_host_key.host_key_fingerprint in message
    assert sshd.host_key_fingerprint in message


def test_ssh_config_gives_host_name_port_user_and_key(sshd, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(f"Host helios-box\n  HostName 127.0.0.1\n  Port {sshd.port}\n"
                      f"  User {sshd.user}\n  IdentityFile {sshd.client_key}\n")
    connection = Connection("helios-box", ssh_config=str(config), allow_agent=False,
                            look_for_keys=False, pinned=[sshd.host_key_fingerprint])
    with connection.connect():
        assert connection.run("whoami").stdout.strip() == sshd.user
        assert connection.label == f"{sshd.user}@127.0.0.1:{sshd.port}"


def test_a_refused_login_is_explained(sshd, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other], check=True)
    with pytest.raises(HostError) as error:
        connect(sshd, key_filename=str(other))
    assert "refused to log in" in str(error.value)
    assert "--ssh-user" in error.value.hint and "authorized_keys" in error.value.hint


def test_an_unreachable_host_is_retried_then_explained(sshd):
    from rig import free_port

    waits = []
    connection = Connection("127.0.0.1", port=free_port(), user=sshd.user, ssh_config=None,
                            allow_agent=False, look_for_keys=False,
                            key_filename=str(sshd.client_key))
    started = time.monotonic()
    with pytest.raises(HostError) as error:
        connection.connect(wait=4, on_wait=waits.append)
    assert "Cannot reach SSH on 127.0.0.1" in str(error.value)
    assert "connection refused" in str(error.value)
    assert waits and "waiting up to 4 s" in waits[0]
    assert time.monotonic() - started < 15


# ------------------------------------------------------------------------ commands


def test_many_commands_share_one_channel(conn):
    for number in range(50):
        assert conn.run(f"echo {number}").stdout == f"{number}\n"
    assert conn.channels_opened == 1 and conn.commands_run == 50


def test_sudo_runs_as_root_in_a_second_shell(conn):
    assert conn.run("id -u", sudo=True).stdout.strip() == "0"
    assert conn.run("id -u").stdout.strip() != "0"
    assert conn.run("id -u", sudo=True).stdout.strip() == "0"
    assert conn.channels_opened == 2


def test_a_command_gets_its_own_stdin(conn):
    data = bytes(range(256)) * 4096
    result = conn.run("sha256sum | cut -c1-64", input=data)
    assert result.stdout.strip() == hashlib.sha256(data).hexdigest()
    assert conn.run("cat").stdout == ""  # not the shell's own input


def test_output_without_a_final_newline_and_on_both_streams(conn):
    result = conn.run("printf 'a\\nb'; printf 'warn' >&2")
    assert (result.stdout, result.stderr) == ("a\nb", "warn")


def test_output_lines_reach_the_caller_while_the_command_runs(conn):
    seen = []

    def on_line(text):
        seen.append((time.monotonic(), text))

    started = time.monotonic()
    result = conn.run("echo one; sleep 0.6; printf 'two\\rthree\\n' >&2; sleep 0.6; "
                      "printf 'four'", on_line=on_line)
    ended = time.monotonic()

    # The last line counts even without its newline; the shell's end marker never shows.
    assert [text for _, text in seen] == ["one", "two", "three", "four"]
    assert seen[0][0] - started < 0.5 and ended - seen[1][0] > 0.4
    assert (result.stdout, result.stderr) == ("one\nfour", "two\rthree\n")


def test_exit_and_syntax_errors_end_only_the_command(conn):
    assert conn.run("exit 4", check=False).status == 4
    assert conn.run("if then fi", check=False).status == 2
    assert conn.run("cd /tmp; export X=1").ok
    assert conn.run("pwd; echo ${X:-unset}").stdout.split() == [conn.run("echo $HOME")
                                                               .stdout.strip(), "unset"]
    assert conn.channels_opened == 1


def test_a_failure_names_step_command_status_and_last_lines(conn):
    secret = "s3cr3t-value-123"
    conn.redact = lambda text: text.replace(secret, "********")
    command = (f"echo token={secret}; for i in $(seq 30); do echo line $i; done; "
               "echo boom >&2; exit 3")
    with pytest.raises(HostError) as error:
        conn.run(command, step="host: demo")
    message = str(error.value)
    assert "(step host: demo)" in message and "exit status 3" in message
    assert "echo token=********" in message and secret not in message
    assert "line 30" in message and "boom" in message and "line 5\n" not in message


def test_a_command_running_too_long_is_stopped_and_the_next_one_works(conn):
    started = time.monotonic()
    with pytest.raises(HostError, match="did not finish within 1 s"):
        conn.run("sleep 30", timeout=1)
    assert time.monotonic() - started < 5
    assert conn.run("echo again").stdout == "again\n"
    assert conn.channels_opened == 2


# ------------------------------------------------------------------ deployment lock

KILLED_CLIENT = """
import json, sys
from helios_aws.host.ssh import Connection
args = json.loads(sys.argv[1])
connection = Connection(args["host"], port=args["port"], user=args["user"],
                        key_filename=args["key"], pinned=[args["pin"]], ssh_config=None,
                        allow_agent=False, look_for_keys=False, lock=args["lock"]).connect()
print("connected", flush=True)
connection.run(args["command"], sudo=True)
"""


def test_a_killed_run_s_last_command_finishes_before_the_next_run_starts(sshd, tmp_path):
    """SIGKILL on this side leaves the host running the command it had sent; the next
    run's root shell waits for it (and says so) instead of racing it."""
    lock = tmp_path / "run" / "helios-aws.lock"
    started, done = tmp_path / "started", tmp_path / "finished"
    args = dict(host=sshd.host, port=sshd.port, user=sshd.user, key=str(sshd.client_key),
                pin=sshd.host_key_fingerprint, lock=str(lock),
                command=f"touch {started}; sleep 4; touch {done}")
    killed = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, json.dumps(args)],
                              stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not started.exists():
        assert killed.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)
    assert not done.exists()
    assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600  # root's alone: nobody else holds it

    waits = []
    with connect(sshd, lock=str(lock), on_lock_wait=waits.append) as connection:
        result = connection.run(f"test -f {done} && echo finished-first", sudo=True)
    assert result.stdout == "finished-first\n"
    assert waits and "Another helios-aws run holds the deployment lock" in waits[0]
    assert f"(last taken by {sshd.user}, pid " in waits[0]  # the holder, named


def test_a_lock_held_too_long_is_reported_with_what_to_look_at(sshd, tmp_path):
    lock = str(tmp_path / "helios-aws.lock")
    with connect(sshd, lock=lock) as holder:
        holder.run("true", sudo=True)
        with connect(sshd, lock=lock, lock_wait=2) as late:
            started = time.monotonic()
            with pytest.raises(HostError, match="kept the deployment lock on .* for 2 s") \
                    as error:
                late.run("true", sudo=True)
            assert time.monotonic() - started < 30
            assert f"lslocks | grep {lock}" in error.value.hint
            assert f"(held by {sshd.user}, pid " in error.value.message
    with connect(sshd, lock=lock, lock_wait=2) as after:
        assert after.run("echo free", sudo=True).stdout == "free\n"


def test_a_daemon_started_by_a_run_does_not_keep_the_lock(sshd, tmp_path):
    lock = str(tmp_path / "helios-aws.lock")
    with connect(sshd, lock=lock) as run:
        daemon = int(run.run("setsid sleep 60 >/dev/null 2>&1 & echo $!", sudo=True).stdout)
    try:
        with connect(sshd, lock=lock, lock_wait=2) as next_run:
            assert next_run.run("echo free", sudo=True).stdout == "free\n"
    finally:
        os.kill(daemon, signal.SIGKILL)


def test_upload_directories_of_killed_runs_are_removed(sshd, tmp_path):
    lock = str(tmp_path / "helios-aws.lock")
    with connect(sshd, lock=lock) as killed:
        left = os.path.dirname(killed.stage(b"SECRET_KEY=a copy of the .env"))
        killed._staging = None  # as if the run died before it could clean up
    assert os.path.isdir(left)
    with connect(sshd, lock=lock) as next_run:
        own = os.path.dirname(next_run.stage(b"mine"))
        assert not os.path.exists(left) and os.path.isdir(own)


def test_a_lock_that_cannot_be_created_is_explained(sshd):
    with connect(sshd, lock="/proc/helios-aws.lock") as connection:
        with pytest.raises(HostError, match="Cannot create the deployment lock "
                                            "/proc/helios-aws.lock"):
            connection.run("true", sudo=True)


def test_a_login_without_sudo_is_refused_with_what_to_grant(tmp_path):
    server = rig.SshServer.start(tmp_path / "ssh", user="helios-aws-nosudo", sudo=False)
    try:
        with connect(server, lock=str(tmp_path / "helios-aws.lock")) as connection:
            assert connection.run("whoami").stdout == "helios-aws-nosudo\n"
            with pytest.raises(HostError, match="sudo -n refused to run commands as root "
                                                "for 'helios-aws-nosudo'") as error:
                connection.run("true", sudo=True)
            assert "NOPASSWD:ALL" in error.value.hint
    finally:
        server.stop()


def test_the_lock_is_only_for_the_root_shell(sshd, tmp_path):
    lock = str(tmp_path / "helios-aws.lock")
    with connect(sshd, lock=lock) as holder:
        holder.run("true", sudo=True)
        with connect(sshd, lock=lock, lock_wait=2) as reader:
            assert reader.run("echo unprivileged").stdout == "unprivileged\n"


# ------------------------------------------------------------------------ files


def test_put_files_writes_many_files_in_one_command(conn, tmp_path):
    files = {tmp_path / "units" / f"unit-{n}.service": f"[Unit]\n# {n}\n" for n in range(20)}
    before = conn.commands_run
    conn.put_files(files, mode=0o644, owner="root")
    assert conn.commands_run - before == 2  # mktemp for the staging directory, unpack
    for path, text in files.items():
        assert path.read_text() == text
        assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.stat().st_uid == 0


def test_staging_directory_is_private_and_removed_on_close(sshd):
    connection = connect(sshd)
    staged = connection.stage(b"data")
    directory = os.path.dirname(staged)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    connection.close()
    assert not os.path.exists(directory)


@pytest.mark.parametrize("answer", ["/etc", "/tmp/helios-aws.x; rm -rf /", "",
                                    "/tmp/helios-aws.ABCDEFGH/../../etc"])
def test_a_staging_directory_not_of_the_asked_form_is_refused(conn, answer):
    """Root installs from the staging directory: mktemp's answer is checked first."""
    conn.run = lambda command, **kwargs: Result(command, 0, answer + "\n", "")
    with pytest.raises(HostError, match="mktemp on .* answered"):
        conn.stage(b"data")


def test_three_channels_for_a_whole_session(conn, tmp_path):
    for _ in range(5):
        conn.run("true")
        conn.run("true", sudo=True)
        conn.put_files({tmp_path / "f": "x"})
    assert conn.channels_opened == 3  # user shell, root shell, SFTP


# ------------------------------------------------------------------------ steps, twice


@pytest.fixture
def service_user():
    """A name for the service user, which the service user step creates on this machine
    (it may not be the login user); removed after the test."""
    name = f"helios-t{secrets.token_hex(4)}"
    yield name
    subprocess.run(["userdel", name], capture_output=True)


def host_ctx(sshd, server_dir, project, service_user):
    """A deployment whose host paths live under ``server_dir``, reached over the rig's
    sshd, with ``service_user``."""
    deployment = params.build([{
        "domain": "vote.example.org", "email": "elections@example.org", "os": "debian13",
        "auth_systems": "password", "service_user": service_user, "ssh_user": sshd.user,
        "host_prefix": str(server_dir),
    }])
    out_dir = server_dir.parent / "deploy"
    configure.configure(deployment, project, out_dir)
    ctx = engine.Context(deployment, out_dir, options={
        "host": sshd.host, "ssh_port": sshd.port, "ssh_key": str(sshd.client_key),
        "trust_host_key": sshd.host_key_fingerprint, "ssh_agent": False,
    })
    return ctx, host_base.Target(ctx, project)


@pytest.fixture
def file_steps_ctx(sshd, tmp_path, service_user):
    """A deployment whose host paths live under a temporary directory, with the host
    half's steps that only touch files."""
    project = Project(root=tmp_path / "project", wsgi="wsgi:application",
                      celery_app="helios", static=(), dependency_source="uv", python="3.13",
                      default_from_email="", login_systems=frozenset({"password"}))
    # The service user writes under shared/ itself: a host it can reach (pytest's own
    # directories are root's alone).
    base = Path(tempfile.mkdtemp(prefix="helios-aws-files-"))
    base.chmod(0o755)
    for system_dir in ("srv", "var/lib", "var/cache", "var/www"):  # as on a real host
        (base / "server" / system_dir).mkdir(parents=True)
        for path in (base / "server", base / "server" / system_dir,
                     (base / "server" / system_dir).parent):
            path.chmod(0o755)
    ctx, target = host_ctx(sshd, base / "server", project, service_user)
    yield ctx, [host.ServiceUser(target), host.EnvFile(target)]
    if ctx.ssh is not None:
        ctx.ssh.close()
    shutil.rmtree(base, ignore_errors=True)


def shared_env(ctx):
    return Path(ctx.deployment.host_prefix) / "srv" / "helios" / "config" / ".env"


def run_steps(ctx, chosen):
    return [outcome for _, outcome, _ in engine.Runner(chosen, ctx,
                                                       engine.Output(lambda t: None)).apply()]


def test_file_steps_change_things_once_then_nothing(file_steps_ctx, service_user, tmp_path):
    ctx, chosen = file_steps_ctx
    assert run_steps(ctx, chosen) == [engine.CREATED, engine.CREATED]
    env = shared_env(ctx)
    assert env.read_text() == (ctx.out_dir / ".env").read_text()
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert pwd.getpwuid(env.stat().st_uid).pw_name == service_user
    # Its directory is root's: the service user reads in it, and cannot put a link in
    # the file's place for systemd (root) to follow.
    config = env.parent.stat()
    assert (stat.S_IMODE(config.st_mode), pwd.getpwuid(config.st_uid).pw_name,
            grp.getgrgid(config.st_gid).gr_name) == (0o750, "root", service_user)
    commands = ctx.ssh.commands_run
    assert run_steps(ctx, chosen) == [engine.UNCHANGED, engine.UNCHANGED]
    assert ctx.ssh.commands_run - commands == 2  # one read each, nothing else


def test_a_hand_edited_env_on_the_server_is_put_back(file_steps_ctx, tmp_path):
    ctx, chosen = file_steps_ctx
    run_steps(ctx, chosen)
    env = shared_env(ctx)
    env.write_text("DEBUG=1\n")
    assert run_steps(ctx, chosen) == [engine.UNCHANGED, engine.UPDATED]
    assert env.read_text() == (ctx.out_dir / ".env").read_text()


# ------------------------------------------------------------------------ the release

FAKE_UV = """#!/bin/sh
# Stands in for uv: records who runs it, and makes the virtualenv `uv sync` would.
set -e
printf '%s %s\\n' "$(id -un)" "$1" >> "$UV_CACHE_DIR/runs"
if [ "$1" = sync ]; then
    mkdir -p "$UV_PROJECT_ENVIRONMENT/bin"
    ln -s /usr/bin/python3 "$UV_PROJECT_ENVIRONMENT/bin/python"
fi
"""


@pytest.fixture
def release_host(sshd, service_user):
    """A project whose top level plants links to a directory outside the release, and a
    host under a directory the service user may enter (pytest's own are root's alone),
    with uv standing in for the real one."""
    base = Path(tempfile.mkdtemp(prefix="helios-aws-release-"))
    base.chmod(0o755)
    outside = base / "outside"
    outside.mkdir()
    (outside / "kept").write_text("untouched\n")
    root = base / "project"
    root.mkdir()
    for name in ("manage.py", "uv.lock"):
        (root / name).write_text("print('x')\n")
    for name in (".helios-aws", ".venv", "media"):
        (root / name).symlink_to(outside)
    project = Project(root=root, wsgi="wsgi:application", celery_app="helios", static=(),
                      dependency_source="uv", python="3.13", default_from_email="",
                      login_systems=frozenset({"password"}))
    ctx, target = host_ctx(sshd, base / "server", project, service_user)
    uv = Path(str(target.uv))
    uv.parent.mkdir(parents=True)
    uv.write_text(FAKE_UV)
    uv.chmod(0o755)
    yield ctx, target, base
    if ctx.ssh is not None:
        ctx.ssh.close()
    shutil.rmtree(base)


def snapshot(directory):
    return sorted((p.relative_to(directory).as_posix(), p.stat().st_mtime_ns)
                  for p in directory.rglob("*"))


def test_the_release_installs_as_the_service_user_and_planted_links_aim_nothing(
        release_host, service_user):
    """Over the real sshd: the project's own .helios-aws, .venv and media links (to a
    directory outside) do not redirect anything; the install runs as the service user,
    whose cache it fills; the release is root's once installed; a re-run changes nothing."""
    ctx, target, base = release_host
    outside = base / "outside"
    before = snapshot(outside)
    chosen = [host.ServiceUser(target), host.Release(target)]
    assert run_steps(ctx, chosen) == [engine.CREATED, engine.CREATED]
    rel = Path(ctx.facts["host_release_dir"])
    runs = Path(str(target.cache_dir / "uv" / "runs"))
    assert runs.read_text() == f"{service_user} sync\n{service_user} pip\n"
    assert pwd.getpwuid(runs.stat().st_uid).pw_name == service_user
    owners = {pwd.getpwuid(p.lstat().st_uid).pw_name for p in [rel, *rel.rglob("*")]}
    assert owners == {"root"}
    assert os.readlink(rel / "media") == "../../shared/media"
    assert (rel / ".venv").is_dir() and not (rel / ".venv").is_symlink()
    assert not (rel / ".helios-aws").exists()
    assert list((rel / "__pycache__").glob("manage.*.pyc"))  # compiled by the install
    records = Path(str(target.release_state(rel.name)))
    assert (records / "installed").is_file() and list(records.glob("helios_aws-*.whl"))
    assert snapshot(outside) == before
    ctx.facts.pop("host_release_dir")
    assert run_steps(ctx, chosen) == [engine.UNCHANGED, engine.UNCHANGED]
    assert runs.read_text().count("sync") == 1


def test_an_option_injecting_git_url_is_refused_before_logging_in(release_host, sshd):
    ctx, target, base = release_host
    canary = base / "canary"
    logins = accepted_logins(sshd)
    ctx.options.update(git_url=f"--upload-pack=touch {canary};:", git_ref="main")
    before = snapshot(base)
    with pytest.raises(ConfigError, match="--git-url"):
        host.steps(ctx, target.project)
    assert not canary.exists() and snapshot(base) == before
    assert ctx.ssh is None and accepted_logins(sshd) == logins
