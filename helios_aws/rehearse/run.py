"""Rehearse a whole deployment of a Helios checkout on this machine.

Starts a local AWS (moto in server mode) holding the operator's Route 53 zone and, with
``--vm``, a local ACME server and a Debian 13 VM as the instance; then runs
``aws_configure``, ``aws_provision`` (twice: the second run must report no changes) and
``aws_check`` on a copy of the project, through the same code paths a real deployment
uses: only the endpoints differ. Every process it starts is stopped at the end (with
``--keep-running``, at Ctrl-C).

The copy holds the files a deployment would upload (the tracked files of a git
checkout), so the checkout itself is never written to; its generated files and log are
in the working directory. Its commands run with this interpreter, so run the rehearsal
from the project's own environment (see the README).
"""

import argparse
import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .. import configure, envfile, layout as layout_mod
from ..host import release as release_mod
from ..aws import ssh_access
from . import aws, processes, tls

ZONE = "rehearsal.test"
DOMAIN = f"vote.{ZONE}"
SENDER = f"elections@{ZONE}"
SETTINGS = f"--settings={layout_mod.SETTINGS_MODULE}"
WRAPPER = "rehearsal-manage"
DEFAULT_WORK = Path.home() / ".cache" / "helios-aws" / "rehearsal"
# The operator's shell must not change what the rehearsal's commands see: the keys the
# deployment's .env sets, and what would send boto3 to a real AWS account.
CLEARED = (*configure.MANAGED_KEYS, *envfile.SECRET_KEYS, "HELIOS_ENV_FILE", "AWS_PROFILE",
           "AWS_DEFAULT_PROFILE", "AWS_CA_BUNDLE", "AWS_REGION", "AWS_SESSION_TOKEN")
CREDENTIALS = {"aws_access_key_id": "rehearsal", "aws_secret_access_key": "rehearsal",
               "region_name": "us-east-1"}


class RehearsalError(Exception):
    """The rehearsal cannot go on; the message says why (and, when given, what to do)."""

    def __init__(self, message, hint=""):
        super().__init__(f"{message}\n  {hint}" if hint else message)


def tail(path, lines=30):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.replace("\r", "").splitlines()[-lines:])


def copy_project(source, target):
    """Copy what a deployment of ``source`` would upload into ``target``; give it a
    ``uv.lock`` when it has a ``pyproject.toml`` without one (the bundled project)."""
    source = Path(source).resolve()
    if not (source / "manage.py").is_file():
        raise RehearsalError(f"{source} has no manage.py: give --project the Helios "
                             "checkout's directory.")
    for rel in release_mod.project_files(source):
        destination = target / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, destination, follow_symlinks=False)
    if (target / "pyproject.toml").is_file() and not (target / "uv.lock").is_file():
        from uv import find_uv_bin

        locked = subprocess.run([find_uv_bin(), "lock", "--quiet", "--python", sys.executable],
                                cwd=target, capture_output=True, text=True,
                                env=dict(os.environ, UV_PYTHON_DOWNLOADS="never"))
        if locked.returncode:
            raise RehearsalError(f"uv lock failed for the copy of {source}:\n{locked.stderr}")
    return target


class Rehearsal:
    def __init__(self, project, work, use_vm):
        self.source = Path(project)
        self.work = work
        self.use_vm = use_vm
        self.stack = []
        self.env = None
        self.project = None
        self.vm = self.pebble = self.ca_bundle = None
        # What the rehearsal watches: (what it is, a check that it still runs, its log).
        self.watched = []
        self.died = None
        self.command = None
        self.wrapper = None
        self._watching = threading.Event()
        self._stopping = False

    def watch(self, what, alive, log=None, keep_as=None):
        """Watch a stand-in: ``alive()`` says whether it runs; its ``log`` is copied into
        the working directory as ``keep_as`` when it dies."""
        self.watched.append((what, alive, log and (Path(log), keep_as or Path(log).name)))
        if not self._watching.is_set():
            self._watching.set()
            threading.Thread(target=self._watch, daemon=True, name="rehearsal-watch").start()

    def _watch(self):
        """Every second: has a stand-in died? Then say so at once, with the last lines of
        its log (kept in the working directory), and end the command that runs."""
        while self.died is None and not self._stopping:
            for what, alive, log in list(self.watched):
                if self._stopping or alive():
                    continue
                died = f"{what} has stopped."
                if log:
                    kept = self.work / log[1]
                    with contextlib.suppress(OSError):
                        shutil.copy2(log[0], kept)
                    died += f" Last lines of {kept}:\n{tail(kept)}"
                # Said before it is known: wait() returns, and the rehearsal may end, as
                # soon as ``died`` is set.
                print(f"\nrehearse: {died}", file=sys.stderr, flush=True)
                self.died = died
                command = self.command
                if command is not None and command.poll() is None:
                    command.terminate()
                break
            time.sleep(1)

    def step(self, title):
        print(f"\n== {title}", flush=True)

    def start_aws(self):
        import boto3

        self.step("Local AWS (moto server) with the operator's hosted zone")
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        moto = aws.MotoServer()
        self.stack.append(moto.stop)
        self.env = {k: v for k, v in os.environ.items() if k not in CLEARED}
        self.env.update(
            AWS_ENDPOINT_URL=moto.url, AWS_ACCESS_KEY_ID="rehearsal",
            AWS_SECRET_ACCESS_KEY="rehearsal", AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=str(self.work / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.work / "no-aws-credentials"),
        )
        # Port 22 is opened per run to the operator's address (no --ssh-cidr): the
        # VM is reached on loopback, so a local address echo answers 127.0.0.1.
        echo = aws.AddressEcho()
        self.stack.append(echo.stop)
        self.env[ssh_access.ECHO_URL_VARIABLE] = echo.url
        route53 = boto3.client("route53", endpoint_url=moto.url, **CREDENTIALS)
        route53.create_hosted_zone(Name=ZONE, CallerReference=ZONE)
        # The local AWS knows Amazon Linux's image parameters, not those of Debian 13 (the
        # default OS): publish them, pointing at images it knows.
        aws.publish_debian_images(moto.url)
        host, port = moto.url.rsplit("//", 1)[1].split(":")
        self.watch("The local AWS (moto server)", lambda: processes.port_open(host, int(port)))
        print(f"AWS endpoint {moto.url}; hosted zone {ZONE}")

    def serve_host_keys(self, public_keys):
        """What the instance prints on its console: the host's real SSH key fingerprints,
        which aws_provision pins for the host half."""
        aws.serve_console_output(aws.cloud_init_console(public_keys))

    def start_vm(self):
        from . import vm

        self.step("Local ACME server and a Debian 13 VM as the instance")
        self.pebble = tls.GuestPebble(self.work / "pebble", tls.LocalCA(self.work / "ca"))
        self.stack.append(self.pebble.stop)
        self.ca_bundle = tls.guest_trust_bundle(self.work / "guest-trust.pem", self.pebble)
        self.watch("The local ACME server (pebble)", self.pebble.process.running,
                   self.pebble.process.log_path)
        self.vm = vm.boot()
        # Its disk is a throw-away overlay: stopping need not wait for a clean shutdown.
        # Its serial log (the guest's console) is kept in the working directory.
        self.stack.append(lambda: self.vm.stop(graceful=False))
        self.stack.append(lambda: shutil.copy2(self.vm.serial_log, self.work / "vm-serial.log"))
        self.watch("The VM (qemu)", lambda: self.vm.process.poll() is None,
                   self.vm.serial_log, "vm-serial.log")
        print(f"VM serial console log: {self.vm.serial_log} (kept as "
              f"{self.work / 'vm-serial.log'} when the rehearsal ends)")
        self.serve_host_keys([self.vm.host_key_line])
        print(f"VM SSH on 127.0.0.1:{self.vm.ssh_port}, host key {self.vm.host_key_fingerprint}")

    def manage(self, *args, expect_ok=True):
        """Run a management command of the copy, passing each line of its output on as it
        comes (its step lines and heartbeats, as in any pipe); returns its exit status and
        whole output."""
        print(f"$ manage.py {' '.join(args)}", flush=True)
        started = time.monotonic()
        lines = []
        self.check_alive()
        with subprocess.Popen([sys.executable, "manage.py", *args, SETTINGS],
                              cwd=self.project, env=dict(self.env, PYTHONUNBUFFERED="1"),
                              text=True, bufsize=1, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
            self.command = process
            for line in process.stdout:
                lines.append(line)
                print(line, end="", flush=True)
        self.command = None
        result = subprocess.CompletedProcess(process.args, process.returncode, "".join(lines))
        print(f"({time.monotonic() - started:.1f}s, exit {result.returncode})", flush=True)
        self.check_alive()
        if expect_ok and result.returncode != 0:
            raise RehearsalError(f"manage.py {args[0]} failed (exit {result.returncode}).")
        return result

    def check_alive(self):
        if self.died:
            raise RehearsalError(self.died.splitlines()[0] + " The rehearsal cannot go on.")

    def ssh_flags(self):
        vm = self.vm
        return ["--host", "127.0.0.1", "--ssh-port", str(vm.ssh_port),
                "--ssh-key", str(vm.key_path), "--trust-host-key", vm.host_key_fingerprint]

    def check_flags(self):
        if not self.use_vm:
            return ["--skip", "site", "--skip", "host"]  # no host without --vm
        # The rehearsal's domain is in the local AWS's Route 53 only, not in public DNS:
        # the record is checked there (aws.*), the lookup is left out.
        return ["--skip", "site.E001", "--ca-file", str(self.work / "acme-root.pem"),
                "--address", "127.0.0.1", "--http-port", str(self.vm.http_port),
                "--https-port", str(self.vm.https_port), *self.ssh_flags()]

    def write_wrapper(self):
        """A script that runs a management command of the copy against this rehearsal:
        its local AWS, and with --vm its VM, ACME server and CA bundle, as the rehearsal's
        own commands ran (the operator's AWS settings cleared). Returns its path."""
        per_command = {"aws_provision": self.host_flags(), "aws_check": self.check_flags()}
        names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE", ssh_access.ECHO_URL_VARIABLE)
        cases = "\n".join(
            f"  {command}) set -- \"$@\" {shlex.join(flags)} ;;"
            for command, flags in per_command.items())
        # The server's backup would look for the real AWS: the VM has neither credentials
        # nor a TLS endpoint for the local S3 (whose bucket policy refuses plain HTTP).
        no_backups = (
            "  aws_backup|aws_restore)\n"
            "    echo 'Backups are not rehearsed: the server (the VM, with --vm) has no "
            "credentials or TLS endpoint for the local S3, and would look for the real "
            "AWS.' >&2\n"
            "    exit 2 ;;\n")
        script = f"""#!/bin/sh
# Runs a manage.py command of the rehearsal's copy against the rehearsal (made by
# python -m helios_aws.rehearse; valid while it runs), e.g.:
#   {self.work / WRAPPER} aws_check
#   {self.work / WRAPPER} aws_provision --plan
# The operator's own AWS settings are left out: nothing reaches a real AWS account.
set -e
[ $# -gt 0 ] || {{ echo "usage: $0 COMMAND [OPTIONS]" >&2; exit 2; }}
command=$1; shift
case "$command" in
{no_backups}{cases}
esac
cd {shlex.quote(str(self.project))}
exec env {' '.join(f'-u {k}' for k in CLEARED)} \\
  {' '.join(f'{k}={shlex.quote(self.env[k])}' for k in names)} \\
  {shlex.quote(sys.executable)} manage.py "$command" {SETTINGS} "$@"
"""
        path = self.work / WRAPPER
        path.write_text(script)
        path.chmod(0o755)
        return path

    def host_flags(self):
        if not self.use_vm:
            return ["--skip-host"]
        return ["--host", "127.0.0.1", "--ssh-port", str(self.vm.ssh_port),
                "--ssh-key", str(self.vm.key_path),
                "--server", self.pebble.directory_url, "--ca-bundle", str(self.ca_bundle)]

    def run(self):
        self.step(f"A copy of {self.source}")
        self.project = copy_project(self.source, self.work / "project")
        print(f"Copied to {self.project}")
        self.start_aws()
        if self.use_vm:
            self.start_vm()
        else:
            key = self.work / "stand-in-host-key"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True)
            self.serve_host_keys([key.with_suffix(".pub").read_text()])
        self.step("aws_configure")
        self.manage("aws_configure", "--domain", DOMAIN, "--email", SENDER,
                    "--auth-systems", "password", "--no-input")
        self.step("aws_provision --plan")
        self.manage("aws_provision", "--plan", *self.host_flags())
        self.step("aws_provision")
        print(f"Its log: {self.project / 'deploy' / 'provision.log'} (what follows, and "
              "each command the host ran)", flush=True)
        self.manage("aws_provision", *self.host_flags())
        self.step("aws_provision again: nothing may change")
        again = self.manage("aws_provision", *self.host_flags())
        if "no changes" not in again.stdout:
            raise RehearsalError("The second aws_provision changed something.")
        self.step("aws_check")
        if self.use_vm:
            (self.work / "acme-root.pem").write_text(self.pebble.issuing_root())
        check_flags = self.check_flags()
        check = self.manage("aws_check", *check_flags, expect_ok=False)
        if self.use_vm:
            print(f"site.E001 (public DNS) was skipped: {ZONE} exists only in the local AWS.")
        else:
            print("The host half and the site and host checks were skipped: "
                  "add --vm to rehearse them on a Debian 13 VM.")
        self.wrapper = self.write_wrapper()
        self.where()
        return check.returncode

    def where(self):
        deploy = self.project / "deploy"
        self.step("Where things are")
        print(f"Project (a copy):     {self.project}")
        print(f"Generated files:      {deploy}")
        print(f"Provisioning log:     {deploy / 'provision.log'}")
        print(f"Work with it:         {self.wrapper} COMMAND [OPTIONS] (aws_check, "
              "aws_provision [--plan|--rollback|--destroy], aws_backup, aws_restore), while "
              "it runs (--keep-running)")
        if not self.use_vm:
            return
        vm = self.vm
        print(f"Site:                 https://{DOMAIN}/ (served by the VM)")
        print(f"Forwarded ports:      SSH 127.0.0.1:{vm.ssh_port}, "
              f"HTTP 127.0.0.1:{vm.http_port}, HTTPS 127.0.0.1:{vm.https_port}")
        print(f"SSH:                  ssh -i {vm.key_path} -p {vm.ssh_port} {vm.user}@127.0.0.1")
        print("Open it from this machine (the name resolves nowhere else, and the certificate "
              "comes from the local ACME server):")
        print(f"  curl --cacert {self.work / 'acme-root.pem'} --resolve "
              f"{DOMAIN}:{vm.https_port}:127.0.0.1 https://{DOMAIN}:{vm.https_port}/")
        print(f"  or in a browser: map {DOMAIN} to 127.0.0.1 in /etc/hosts, trust "
              f"{self.work / 'acme-root.pem'}, and open https://{DOMAIN}:{vm.https_port}/")

    def wait(self):
        """Until Ctrl-C (0), or until a stand-in dies (1)."""
        print("\nEverything keeps running until Ctrl-C (the rehearsal says so at once if "
              "the VM or a stand-in stops).", flush=True)
        try:
            while self.died is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print()
            return 0
        return 1

    def stop(self):
        self._stopping = True
        while self.stack:
            try:
                self.stack.pop()()
            except Exception as exc:  # keep stopping the others
                print(f"rehearse: while stopping: {exc}", file=sys.stderr)


def arguments():
    parser = argparse.ArgumentParser(prog="python -m helios_aws.rehearse",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default=".",
                        help="The Helios checkout to rehearse (default: this directory).")
    parser.add_argument("--vm", action="store_true",
                        help="Use a Debian 13 VM (qemu) as the instance and run the host half.")
    parser.add_argument("--work", default=str(DEFAULT_WORK),
                        help=f"Working directory (default: {DEFAULT_WORK}): a new or empty one, or one "
                             "an earlier rehearsal made, which is emptied first. Never "
                             "inside the project, nor holding it.")
    parser.add_argument("--keep-running", action="store_true",
                        help="Keep the local AWS, ACME server and VM running until Ctrl-C, "
                             "to look at the site.")
    return parser


MARKER = ".helios-aws-rehearsal"


def prepare_work(work, project):
    """Empty ``work`` for a new rehearsal, or refuse: only a directory that is absent,
    empty, or marked as one an earlier rehearsal made is ever emptied, and never one that
    holds the project or lies inside it."""
    work, project = Path(work).resolve(), Path(project).resolve()
    if work == project or work in project.parents or project in work.parents:
        where = "is inside" if project in work.parents else "holds"
        raise RehearsalError(
            f"--work {work} {where} the project {project}: the rehearsal empties its "
            "working directory.",
            "Give --work a directory outside the project, e.g. the default "
            f"{DEFAULT_WORK}.")
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise RehearsalError(f"--work {work} is not a directory.",
                             "Give --work a new or empty directory.")
    if work.is_dir() and any(work.iterdir()) and not (work / MARKER).is_file():
        raise RehearsalError(
            f"--work {work} is not empty and no rehearsal made it: nothing was deleted.",
            "Give --work a new or empty directory (the rehearsal empties it each run).")
    if work.is_dir():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("A Helios rehearsal's working directory: each rehearsal "
                               "empties it.\n")
    return work


def main(argv=None):
    args = arguments().parse_args(argv)
    try:
        work = prepare_work(args.work, args.project)
    except RehearsalError as exc:
        print(f"rehearse: {exc}", file=sys.stderr)
        return 2
    # The rehearsal's own AWS calls go to its local AWS only: the operator's settings
    # (a profile that points at a real account, say) are no concern of this process.
    for key in CLEARED:
        os.environ.pop(key, None)
    rehearsal = Rehearsal(args.project, work, args.vm)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        status = rehearsal.run()
        if args.keep_running:
            return rehearsal.wait() or status
        return status
    except RehearsalError as exc:
        print(f"rehearse: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nrehearse: interrupted; everything it started is stopped.", file=sys.stderr)
        return 130
    finally:
        rehearsal.stop()
