"""Rehearse a whole deployment on this machine, with no AWS account and no cost.

Starts a local AWS (moto in server mode) holding the operator's Route 53 zone, and, with
``--vm``, a local ACME server and a Debian 13 VM as the instance; then runs
``aws_configure``, ``aws_provision`` (twice: the second run must report no changes) and
``aws_check`` on the bundled Helios-like project, through the same code paths a real
deployment uses: only the endpoints differ. Every process it starts is stopped at the end.
"""

import argparse
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import boto3  # noqa: E402

import fixtures  # noqa: E402
import rig  # noqa: E402

ZONE = "rehearsal.test"
DOMAIN = f"vote.{ZONE}"
SENDER = f"elections@{ZONE}"
SETTINGS = "--settings=helios_aws.settings_overrides.production"


class Rehearsal:
    def __init__(self, work, use_vm):
        self.work = work
        self.use_vm = use_vm
        self.stack = []
        self.env = None
        self.project = None

    def step(self, title):
        print(f"\n== {title}", flush=True)

    def start_aws(self):
        self.step("Local AWS (moto server) with the operator's hosted zone")
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        moto = rig.MotoServer()
        self.stack.append(moto.stop)
        self.env = fixtures.helios_env(
            AWS_ENDPOINT_URL=moto.url, AWS_ACCESS_KEY_ID="rehearsal",
            AWS_SECRET_ACCESS_KEY="rehearsal", AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=str(self.work / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.work / "no-aws-credentials"),
        )
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CA_BUNDLE", "AWS_REGION"):
            self.env.pop(name, None)
        route53 = boto3.client("route53", endpoint_url=moto.url, region_name="us-east-1",
                               aws_access_key_id="rehearsal", aws_secret_access_key="rehearsal")
        route53.create_hosted_zone(Name=ZONE, CallerReference=ZONE)
        if self.use_vm:
            # The local AWS knows Amazon Linux's image parameters, not Debian's: publish
            # Debian 13's, pointing at an image it knows.
            ssm = boto3.client("ssm", endpoint_url=moto.url, region_name="us-east-1",
                               aws_access_key_id="rehearsal", aws_secret_access_key="rehearsal")
            image = ssm.get_parameter(Name="/aws/service/ami-amazon-linux-latest/"
                                      "al2023-ami-kernel-default-x86_64")["Parameter"]["Value"]
            rig.publish_public_parameter("/aws/service/debian/release/13/latest/amd64", image)
        print(f"AWS endpoint {moto.url}; hosted zone {ZONE}")

    def serve_host_keys(self, public_keys):
        """What the instance prints on its console: the host's real SSH key fingerprints,
        which aws_provision pins for the host half."""
        rig.serve_console_output(rig.cloud_init_console(public_keys))

    def start_vm(self):
        import vm

        self.step("Local ACME server and a Debian 13 VM as the instance")
        self.pebble = rig.GuestPebble(self.work / "pebble", rig.LocalCA(self.work / "ca"))
        self.stack.append(self.pebble.stop)
        self.ca_bundle = rig.guest_trust_bundle(self.work / "guest-trust.pem", self.pebble)
        self.vm = vm.boot()
        # Its disk is a throw-away overlay: stopping need not wait for a clean shutdown.
        self.stack.append(lambda: self.vm.stop(graceful=False))
        self.serve_host_keys([self.vm.host_key_line])
        print(f"VM SSH on 127.0.0.1:{self.vm.ssh_port}, host key {self.vm.host_key_fingerprint}")

    def manage(self, *args, expect_ok=True):
        print(f"$ manage.py {' '.join(args)}", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, "manage.py", *args, SETTINGS],
                                cwd=self.project, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        print(result.stdout.rstrip(), flush=True)
        print(f"({time.monotonic() - started:.1f}s, exit {result.returncode})", flush=True)
        if expect_ok and result.returncode != 0:
            raise SystemExit(f"rehearse: manage.py {args[0]} failed (exit {result.returncode})")
        return result

    def host_flags(self):
        if not self.use_vm:
            return ["--skip-host"]
        return ["--host", "127.0.0.1", "--ssh-port", str(self.vm.ssh_port),
                "--ssh-key", str(self.vm.key_path),
                "--server", self.pebble.directory_url, "--ca-bundle", str(self.ca_bundle)]

    def run(self):
        self.project = fixtures.make_fixture_project(self.work)
        self.start_aws()
        if self.use_vm:
            self.start_vm()
        else:
            key = self.work / "stand-in-host-key"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True)
            self.serve_host_keys([key.with_suffix(".pub").read_text()])
        os_flags = ["--os", "debian13"] if self.use_vm else []
        self.step("aws_configure")
        self.manage("aws_configure", "--domain", DOMAIN, "--email", SENDER,
                    "--auth-systems", "password", "--ssh-cidr", "127.0.0.1/32",
                    "--no-input", *os_flags)
        self.step("aws_provision --plan")
        self.manage("aws_provision", "--plan", *self.host_flags())
        self.step("aws_provision")
        self.manage("aws_provision", *self.host_flags())
        self.step("aws_provision again: nothing may change")
        again = self.manage("aws_provision", *self.host_flags())
        if "no changes" not in again.stdout:
            raise SystemExit("rehearse: the second aws_provision changed something")
        self.step("aws_check")
        check_flags = ["--skip", "site", "--skip", "host"]  # no host without --vm
        if self.use_vm:
            issuing_root = self.work / "acme-root.pem"
            issuing_root.write_text(self.pebble.issuing_root())
            # The rehearsal's domain is in the local AWS's Route 53 only, not in public
            # DNS: the record is checked there (aws.*), the lookup is left out.
            check_flags = ["--skip", "site.E001",
                           "--ca-file", str(issuing_root), "--address", "127.0.0.1",
                           "--http-port", str(self.vm.http_port),
                           "--https-port", str(self.vm.https_port),
                           "--host", "127.0.0.1", "--ssh-port", str(self.vm.ssh_port),
                           "--ssh-key", str(self.vm.key_path),
                           "--trust-host-key", self.vm.host_key_fingerprint]
        check = self.manage("aws_check", *check_flags, expect_ok=False)
        if self.use_vm:
            print(f"site.E001 (public DNS) was skipped: {ZONE} exists only in the local AWS.")
        else:
            print("The host half and the site and host checks were skipped: "
                  "run `scripts/rehearse --vm` to rehearse them on a Debian 13 VM.")
        self.step("Where things are")
        print(f"Project:              {self.project}")
        print(f"Generated files:      {self.project / 'deploy'}")
        print(f"Provisioning log:     {self.project / 'deploy' / 'provision.log'}")
        return check.returncode

    def stop(self):
        while self.stack:
            try:
                self.stack.pop()()
            except Exception as exc:  # keep stopping the others
                print(f"rehearse: while stopping: {exc}", file=sys.stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vm", action="store_true",
                        help="Use a Debian 13 VM (qemu) as the instance and run the host half.")
    parser.add_argument("--work", default=str(REPO / ".cache" / "rehearsal"),
                        help="Working directory (emptied first).")
    args = parser.parse_args(argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rehearsal = Rehearsal(work, args.vm)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return rehearsal.run()
    finally:
        rehearsal.stop()


if __name__ == "__main__":
    sys.exit(main())
