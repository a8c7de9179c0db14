"""Create (or adopt), check, stop, start or destroy the deployment's AWS resources and host."""

from django.core.management.base import BaseCommand

from helios_aws import cli, params, provision
from helios_aws.engine import Output
from helios_aws.errors import ConfigError


class Command(BaseCommand):
    help = (
        "Provision the deployment recorded by aws_configure: the AWS resources (key pair, "
        "security group, mail permissions, EC2 instance, Elastic IP, DNS, SES), then the "
        "host. Safe to re-run: what exists is adopted by its tag, only differences change."
    )

    def add_arguments(self, parser):
        params.add_output_argument(parser)
        parser.add_argument("--profile", default=None,
                            help="AWS profile to use (default: the standard credential chain).")
        parser.add_argument("--region", default=None,
                            help="AWS region for this run (default: the deployment's).")
        parser.add_argument("--plan", action="store_true",
                            help="Show what would be created, changed or adopted and the "
                                 "estimated monthly cost; change nothing. With --destroy: "
                                 "what it would back up, snapshot, delete and keep.")
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--destroy", action="store_true",
                            help="Delete the deployment's AWS resources (asks for the "
                                 "deployment's name in a terminal, or give --no-input; takes "
                                 "a final backup and a snapshot of the root volume first; "
                                 "keeps the backup bucket).")
        action.add_argument("--operator-policy", action="store_true",
                            help="Print the least-privilege IAM policy (JSON) an operator "
                                 "needs to run every command for this deployment, to use "
                                 "instead of administrator keys; change nothing.")
        action.add_argument("--stop", action="store_true", help="Stop the instance.")
        action.add_argument("--start", action="store_true", help="Start the instance.")
        action.add_argument("--test-alert", action="store_true",
                            help="Send one alert through the deployment's alerts topic, "
                                 "to every confirmed --alert-email address.")
        parser.add_argument("--rollback", action="store_true",
                            help="Switch the server back to the previous installed release and "
                                 "restart the app (refused while the database has migrations "
                                 "that release lacks); with --plan, only show it.")
        parser.add_argument("--releases", action="store_true",
                            help="List the releases on the server (id, installed when, "
                                 "source, serving or not).")
        parser.add_argument("--skip-host", action="store_true",
                            help="Provision AWS only, not the server's software.")
        parser.add_argument("--skip-aws", action="store_true",
                            help="Provision the host only, with what AWS gave it last time.")
        parser.add_argument("--no-snapshot", action="store_true",
                            help="With --destroy: do not snapshot the root volume first.")
        parser.add_argument("--no-backup", action="store_true",
                            help="With --destroy: do not take a final backup first.")
        parser.add_argument("--delete-backups", default=None, metavar="NAME",
                            help="With --destroy: also delete the backup bucket and every "
                                 "backup in it (give the deployment's name to confirm).")
        parser.add_argument("--no-input", action="store_true",
                            help="Never prompt (--destroy then proceeds without asking).")
        host = parser.add_argument_group("host half")
        host.add_argument("--host", default=None,
                          help="Address of the server (default: the Elastic IP).")
        host.add_argument("--ssh-port", type=params.tcp_port("--ssh-port"), default=None, help="SSH port (default 22).")
        host.add_argument("--ssh-user", default=None,
                          help="SSH login user (default: the deployment's, e.g. admin).")
        host.add_argument("--ssh-key", default=None,
                          help="Private key for SSH (default: the key pair's key in the "
                               "output directory).")
        host.add_argument("--trust-host-key", default=None, metavar="FINGERPRINT",
                          help="The server's SSH host key fingerprint (SHA256:...), when "
                               "it cannot be read from the console output (which is then "
                               "not awaited).")
        host.add_argument("--server", default=None, metavar="URL",
                          help="ACME directory URL for the certificate (default: Let's "
                               "Encrypt).")
        host.add_argument("--ca-bundle", default=None, metavar="FILE",
                          help="CA certificates (PEM) the server must trust: a local ACME "
                               "server's (with --server), or a TLS-inspecting proxy's.")
        host.add_argument("--git-url", default=None, help="Helios repository to deploy.")
        host.add_argument("--git-ref", default=None, help="Branch, tag or commit to deploy.")
        host.add_argument("--ssh-from", default=None, metavar="ADDRESS",
                          help="Without --ssh-cidr: this machine's public address, which "
                               "port 22 is opened to for the run (default: the answer of "
                               "AWS's address echo, https://checkip.amazonaws.com).")
        freeze = parser.add_argument_group("the election freeze")
        freeze.add_argument("--force", action="store_true",
                            help="Change the server although an election is open (needs "
                                 "--reason; recorded on the server and in the bucket).")
        freeze.add_argument("--reason", default="",
                            help="Why the change cannot wait (with --force).")
        mail = parser.add_argument_group("mail")
        mail.add_argument("--request-production-access", action="store_true",
                          help="Ask AWS to take the region's SES account out of the sandbox "
                               "(SES v2 PutAccountDetails, with --use-case and the site's "
                               "URL); change nothing else. With --plan: say what it would "
                               "file.")
        mail.add_argument("--use-case", default="", metavar="TEXT",
                          help="What mail the site sends and to whom, for AWS's review "
                               "(with --request-production-access).")

    @cli.translate_errors
    def handle(self, *args, **options):
        out_dir = cli.resolve_output(options)
        overrides = {"region": options["region"]} if options["region"] else None
        deployment = params.load(out_dir, overrides, cli.settings_layer())
        if options["operator_policy"]:
            if options["plan"]:
                raise ConfigError("--operator-policy changes nothing and has no plan.",
                                  "Drop --plan.")
            self.stdout.write(provision.operator_policy(deployment, options.get("profile")))
            return
        if options["request_production_access"] or options["use_case"]:
            self.stdout.write(provision.production_access(deployment, options))
            return
        out = Output(self.stdout.write, options["verbosity"], self.style,
                     terminal=self._terminal() if self.stdout.isatty() else None)
        provision.run(deployment, out_dir, options, out, self._confirmer(options))

    def _terminal(self):
        def write(text):
            self.stdout.write(text, ending="")
            self.stdout.flush()

        return write

    def _confirmer(self, options):
        def confirm(prompt, expected):
            if options["no_input"]:
                return True
            if not cli.can_ask(options):
                raise ConfigError("--destroy asks for confirmation, and there is no "
                                  "terminal to ask in.",
                                  "Run it in a terminal, or add --no-input to skip the "
                                  "question.")
            return cli.ask(prompt) == expected

        return confirm
