"""Back the deployment up now (database and uploaded files, to its S3 bucket), or list
the backups."""

import argparse

from django.core.management.base import BaseCommand

from helios_aws import backup, backup_commands, cli, params


class Command(BaseCommand):
    help = (
        "Run a backup on the server now (pg_dump of Helios's database and an archive of "
        "MEDIA_ROOT, streamed to the deployment's S3 bucket with a manifest), over the "
        "verified SSH connection, and report it. --list shows the backups with their age, "
        "size and whether a restore drill verified them."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        params.add_output_argument(parser)
        parser.add_argument("--list", action="store_true",
                            help="List the backups in S3 (read with your AWS credentials).")
        parser.add_argument("--profile", default="", help="AWS profile for --list.")
        backup_commands.add_ssh_arguments(parser)
        backup_commands.add_host_side_arguments(parser)
        parser.add_argument("--kind", choices=backup.KINDS, default="daily",
                            help=argparse.SUPPRESS)

    @cli.translate_errors
    def handle(self, *args, **options):
        write = self.stdout.write
        if options["here"]:
            return backup_commands.here_backup(options, write)
        out_dir = cli.resolve_output(options)
        deployment = params.load(out_dir, None, cli.settings_layer())
        if options["list"]:
            for line in backup_commands.listing(deployment, out_dir, options["profile"]):
                write(line)
            return
        options["on_lock_wait"] = write
        backup_commands.on_host(deployment, out_dir, options, "aws_backup",
                                ["--kind", options["kind"]], write, as_service=True)
        write(self.style.SUCCESS("Backup done."))
