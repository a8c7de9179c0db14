"""The rehearsal runs an operator's own checkout, from the package, without the tests.

``python -m helios_aws.rehearse --project PATH`` is what an operator runs from their
Helios (the VM variant is the same code with a VM as the host; the end-to-end VM test
covers that host half). Here it runs from a directory where no test module can be
imported, against a checkout with a change of its own.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fixtures import FIXTURE_DIR, helios_env


def rehearse(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "helios_aws.rehearse", "--work",
                           str(tmp_path / "work"), *args], cwd=tmp_path, env=helios_env(),
                          capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)


def test_rehearses_the_operators_checkout_and_leaves_it_untouched(tmp_path):
    checkout = tmp_path / "my-helios"
    shutil.copytree(FIXTURE_DIR, checkout, ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "server_ui/templates/local-change.txt").write_text("our own change\n")
    before = sorted(p.relative_to(checkout) for p in checkout.rglob("*"))

    result = rehearse(tmp_path, "--project", str(checkout))

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    copy = tmp_path / "work/project"
    assert (copy / "server_ui/templates/local-change.txt").read_text() == "our own change\n"
    assert "no changes" in result.stdout.split("== aws_provision again")[1]
    assert re.search(r"^(PASS|WARN): 0 failed", result.stdout, re.M), result.stdout[-3000:]
    assert f"Generated files:      {copy / 'deploy'}" in result.stdout
    # Nothing was written into the checkout: no deploy/, no lock, no byte code.
    assert sorted(p.relative_to(checkout) for p in checkout.rglob("*")) == before


def test_a_directory_that_is_not_a_django_project_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    result = rehearse(tmp_path, "--project", str(tmp_path / "elsewhere"))
    assert result.returncode == 1
    assert "has no manage.py" in result.stderr and "Traceback" not in result.stderr


def tree(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.mark.parametrize("work", [".", "..", "sub/dir", "sub"])
def test_work_never_holds_nor_lies_inside_the_project(tmp_path, work):
    checkout = tmp_path / "checkout"
    shutil.copytree(FIXTURE_DIR, checkout, ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "sub").mkdir()
    (checkout / ".git").mkdir()
    (checkout / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    before = tree(tmp_path)
    # From inside the checkout, where --project defaults to ".".
    result = subprocess.run([sys.executable, "-m", "helios_aws.rehearse", "--work", work],
                            cwd=checkout, env=helios_env(), capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "the project" in result.stderr and "Traceback" not in result.stderr
    assert tree(tmp_path) == before


def test_work_that_no_rehearsal_made_is_never_emptied(tmp_path):
    (tmp_path / "project").mkdir()
    mine = tmp_path / "work"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work\n")
    result = rehearse(tmp_path, "--project", str(tmp_path / "project"))
    assert result.returncode == 2
    assert "not empty and no rehearsal made it" in result.stderr
    assert (mine / "thesis.tex").read_text() == "years of work\n"
    (tmp_path / "afile").write_text("x")
    result = subprocess.run([sys.executable, "-m", "helios_aws.rehearse", "--work",
                             str(tmp_path / "afile"), "--project", str(tmp_path / "project")],
                            env=helios_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not a directory" in result.stderr


def test_a_directory_an_earlier_rehearsal_made_is_emptied_and_reused(tmp_path):
    (tmp_path / "project").mkdir()
    first = rehearse(tmp_path, "--project", str(tmp_path / "project"))
    assert first.returncode == 1 and "has no manage.py" in first.stderr
    work = tmp_path / "work"
    assert (work / ".helios-aws-rehearsal").is_file()
    (work / "left-over").write_text("from the first run\n")
    second = rehearse(tmp_path, "--project", str(tmp_path / "project"))
    assert second.returncode == 1 and "has no manage.py" in second.stderr
    assert not (work / "left-over").exists()


STREAMING_MANAGE = """\
import pathlib, sys, time
print("first line of the command", flush=True)
release = pathlib.Path(sys.argv[2])
deadline = time.monotonic() + 60
while not release.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
print("released" if release.exists() else "never released")
"""


def test_a_commands_output_reaches_the_operator_while_it_runs(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "manage.py").write_text(STREAMING_MANAGE)
    release = tmp_path / "release"
    driver = ("import sys; from pathlib import Path; from helios_aws.rehearse import run\n"
              "r = run.Rehearsal(sys.argv[1], Path(sys.argv[1]), False)\n"
              "r.project = Path(sys.argv[1]); r.env = {}\n"
              "r.manage('wait', sys.argv[2])\n")
    with subprocess.Popen([sys.executable, "-c", driver, str(project), str(release)],
                          stdout=subprocess.PIPE, text=True, env=helios_env()) as process:
        try:
            assert process.stdout.readline().startswith("$ manage.py wait")
            assert process.stdout.readline() == "first line of the command\n"
            # The command is still running (it waits for the release): the line came live.
            assert process.poll() is None
            release.write_text("go")
            rest = process.stdout.read()
        finally:
            release.touch()
    assert process.returncode == 0
    assert rest.startswith("released\n") and "exit 0)" in rest


WATCHED = """\
import subprocess, sys
from pathlib import Path
from helios_aws.rehearse import run
work = Path(sys.argv[1])
r = run.Rehearsal(work, work, False)
qemu = subprocess.Popen(["sleep", "600"])
print(qemu.pid, flush=True)
serial = work / "vm" / "serial.log"
serial.parent.mkdir()
serial.write_text("[  812.5] BUG: kernel NULL pointer dereference\\n[  812.6] Kernel panic\\n")
r.watch("The VM (qemu)", lambda: qemu.poll() is None, serial, "vm-serial.log")
status = r.wait()
r.stop()
print("status", status, flush=True)
"""


def test_a_vm_that_dies_is_noticed_at_once_with_its_serial_log_kept(tmp_path):
    with subprocess.Popen([sys.executable, "-c", WATCHED, str(tmp_path)], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=helios_env()) as process:
        qemu = int(process.stdout.readline())
        assert "keeps running until Ctrl-C" in process.stdout.readline() + \
            process.stdout.readline()
        os.kill(qemu, signal.SIGKILL)
        started = time.monotonic()
        out, err = process.communicate(timeout=30)
    assert time.monotonic() - started < 10
    assert "status 1" in out
    assert "rehearse: The VM (qemu) has stopped." in err
    assert "Kernel panic" in err  # the serial log's last lines, said at once
    kept = tmp_path / "vm-serial.log"
    assert str(kept) in err and "Kernel panic" in kept.read_text()


def test_a_kept_rehearsal_can_be_worked_with_through_its_wrapper(tmp_path):
    checkout = tmp_path / "my-helios"
    shutil.copytree(FIXTURE_DIR, checkout, ignore=shutil.ignore_patterns("__pycache__"))
    env = helios_env(AWS_PROFILE="operators-real-account",
                     AWS_ENDPOINT_URL="https://nowhere.invalid")
    with subprocess.Popen([sys.executable, "-m", "helios_aws.rehearse", "--work",
                           str(tmp_path / "work"), "--project", str(checkout),
                           "--keep-running"], cwd=tmp_path, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL) as rehearsal:
        try:
            seen = []
            deadline = time.monotonic() + 500
            while time.monotonic() < deadline:
                line = rehearsal.stdout.readline()
                assert line, "".join(seen)[-3000:]
                seen.append(line)
                if "keeps running until Ctrl-C" in line:
                    break
            text = "".join(seen)
            wrapper = tmp_path / "work" / "rehearsal-manage"
            assert f"Work with it:         {wrapper} COMMAND" in text
            linted = subprocess.run(["shellcheck", str(wrapper)], capture_output=True,
                                    text=True)
            assert linted.returncode == 0, linted.stdout
            # The operator's shell points at a real account: the wrapper leaves that out.
            check = subprocess.run([str(wrapper), "aws_check", "--format", "json"], env=env,
                                   capture_output=True, text=True, timeout=300)
            report = json.loads(check.stdout)
            aws_checks = [c for c in report["checks"] if c["area"] == "aws"]
            assert aws_checks and all(c["status"] != "fail" for c in aws_checks), aws_checks
            assert check.returncode == 0, check.stderr
            plan = subprocess.run([str(wrapper), "aws_provision", "--plan"], env=env,
                                  capture_output=True, text=True, timeout=300)
            assert plan.returncode == 0 and "keep" in plan.stdout, plan.stderr
            backup = subprocess.run([str(wrapper), "aws_backup"], env=env,
                                    capture_output=True, text=True, timeout=60)
            assert backup.returncode == 2
            assert "Backups are not rehearsed" in backup.stderr
        finally:
            rehearsal.send_signal(signal.SIGINT)
            rest, _ = rehearsal.communicate(timeout=60)
    assert rehearsal.returncode == 0, rest[-2000:]
