"""Check a deployment: its configuration, the live site, AWS and the host, with a verdict."""

import argparse
import json

from django.core.management.base import BaseCommand, CommandError

from helios_aws import cli, params, probes
from helios_aws.engine import phase
from helios_aws.probes.report import FAIL_LEVELS


class Command(BaseCommand):
    help = (
        "Check the deployment recorded in the output directory: Django's system checks on "
        "its .env, the live site (DNS, redirect, TLS, HSTS, static files), the AWS "
        "resources and the host over SSH. Exits non-zero when a check at or above "
        "--fail-level fails. Ids and the JSON schema: docs/checks.md."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        params.add_output_argument(parser)
        parser.add_argument("--local", action="store_true",
                            help="Only the configuration checks, on this process's "
                                 "settings (Django's system checks, deploy ones included).")
        parser.add_argument("--only", action="append", default=[], metavar="AREA|ID",
                            help="Run only these areas (config, site, aws, host, mail, seal) or "
                                 "check ids; repeatable, or comma-separated.")
        parser.add_argument("--skip", action="append", default=[], metavar="AREA|ID",
                            help="Leave out these areas or check ids.")
        parser.add_argument("--format", choices=("text", "json"), default="text",
                            help="text (default) or json (schema in docs/checks.md).")
        parser.add_argument("--fail-level", choices=FAIL_LEVELS, default="error",
                            help="Exit non-zero when a check fails at this level or above "
                                 "(default: error; warning also fails on warnings).")
        parser.add_argument("--address", default="", metavar="HOST[:PORT]",
                            help="Connect to this address (and HTTPS port) instead of the "
                                 "domain's, still sending the domain as Host and SNI.")
        parser.add_argument("--http-port", type=int, default=None,
                            help="HTTP port to connect to (default: the deployment's).")
        parser.add_argument("--https-port", type=int, default=None,
                            help="HTTPS port to connect to (default: the deployment's).")
        parser.add_argument("--ca-file", default="", metavar="PEM",
                            help="Trust only this CA for the site's certificate (a local "
                                 "or staging CA).")
        parser.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                            help="Bound every probe to this many seconds (default: each "
                                 "probe's own, 15 s for most; the probes that start Django "
                                 "on the host always get the time a cold start needs).")
        parser.add_argument("--profile", default="", help="AWS profile to use.")
        parser.add_argument("--host", default="",
                            help="SSH host (default: the Elastic IP in state.json); may be "
                                 "an alias of ~/.ssh/config.")
        parser.add_argument("--ssh-port", type=params.tcp_port("--ssh-port"), default=None, help="SSH port.")
        parser.add_argument("--ssh-user", default="",
                            help="SSH login user (default: the deployment's, e.g. ec2-user).")
        parser.add_argument("--ssh-key", default="",
                            help="Private key to log in with (default: the key "
                                 "aws_provision saved, ~/.ssh/config, the agent).")
        parser.add_argument("--known-hosts", default="",
                            help="A known_hosts file to verify the host key against.")
        parser.add_argument("--trust-host-key", action="append", default=[],
                            metavar="SHA256:...",
                            help="Trust this host key fingerprint (besides those "
                                 "aws_provision pinned).")
        parser.add_argument("--send-test-email", default="", metavar="ADDRESS",
                            help="Also send a test message through the deployment's mail "
                                 "configuration and report its SES message id.")
        parser.add_argument("--ssh-from", default="", metavar="ADDRESS",
                            help="Without --ssh-cidr: this machine's public address, which "
                                 "port 22 is opened to while the host is checked (default: "
                                 "the answer of AWS's address echo).")
        parser.add_argument("--voters", type=_count, default=None, metavar="N",
                            help="How many voters will be mailed (mail.E002); default: the "
                                 "voters of the open and upcoming elections in the "
                                 "deployment's database.")

    @cli.translate_errors
    def handle(self, *args, **options):
        with phase("the checks", "Nothing was changed; run aws_check again."):
            report = probes.check(probes.Options(
                out_dir=None if options["local"] else cli.resolve_output(options),
                local=options["local"],
                only=_tokens(options["only"]),
                skip=_tokens(options["skip"]),
                address=options["address"],
                http_port=options["http_port"],
                https_port=options["https_port"],
                ca_file=options["ca_file"],
                timeout=options["timeout"],
                profile=options["profile"],
                test_email=options["send_test_email"],
                host=options["host"],
                ssh_port=options["ssh_port"],
                ssh_user=options["ssh_user"],
                ssh_key=options["ssh_key"],
                known_hosts=options["known_hosts"],
                trust_host_key=_tokens(options["trust_host_key"]),
                settings_layer=cli.settings_layer(),
                ssh_from=options["ssh_from"],
                voters=options["voters"],
            ))
        if options["format"] == "json":
            self.stdout.write(json.dumps(report.as_json(), indent=2))
        else:
            for line in report.lines(self.style, options["verbosity"]):
                self.stdout.write(line)
        failures = report.failures(options["fail_level"])
        if failures:
            raise CommandError(
                f"{len(failures)} check(s) failed at level {options['fail_level']} or above: "
                f"{', '.join(r.id for r in failures)}.")


def _seconds(text):
    value = float(text)
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("give a number of seconds between 0 and 3600")
    return value


def _count(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("give a number of voters, 0 or more")
    return value


def _tokens(values):
    return tuple(t.strip() for value in values for t in value.split(",") if t.strip())
