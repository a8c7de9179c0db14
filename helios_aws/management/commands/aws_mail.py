"""List the addresses whose mail did not arrive, from the mail ledger, as text or CSV."""

from django.core.management.base import BaseCommand

from helios_aws import cli, ledger


class Command(BaseCommand):
    help = ("List the addresses that did not get their mail and why (send failures, and "
            "what SES reported), for an election or a time range, from the mail ledger in "
            "the deployment's database. Run it on the host, in Helios's settings.")
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--election", default="", metavar="SHORT_NAME|UUID",
                            help="Only the mail of this election.")
        parser.add_argument("--since", default="", metavar="WHEN",
                            help="From this date or time (UTC, e.g. 2026-05-01T18:00).")
        parser.add_argument("--until", default="", metavar="WHEN",
                            help="Before this date or time (UTC).")
        parser.add_argument("--format", choices=("text", "csv"), default="text")

    @cli.translate_errors
    def handle(self, *args, **options):
        rows = ledger.undelivered(options["election"], options["since"], options["until"])
        if options["format"] == "csv":
            self.stdout.write(ledger.as_csv(rows), ending="")
        else:
            for line in ledger.as_text(rows):
                self.stdout.write(line)
