"""Prove a backup restores (the drill), or restore one into production."""

from django.core.management.base import BaseCommand

from helios_aws import backup_commands, cli, params
from helios_aws.errors import ConfigError


class Command(BaseCommand):
    help = (
        "--drill: restore the latest backup (or --backup KEY) into a scratch database on "
        "the server, check its checksums and row counts against its manifest, drop the "
        "scratch database and record the result. --backup KEY --into-production: stop "
        "Helios, take a safety backup, restore, migrate if needed, start Helios again."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        params.add_output_argument(parser)
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--drill", action="store_true",
                            help="Restore into a scratch database and compare (harmless).")
        action.add_argument("--into-production", action="store_true",
                            help="Replace the production database and files with --backup.")
        parser.add_argument("--backup", default="", metavar="KEY",
                            help="The backup (as aws_backup --list shows it; default for "
                                 "--drill: the newest).")
        parser.add_argument("--force", action="store_true",
                            help="Restore into production even while an election is open.")
        parser.add_argument("--yes", action="store_true",
                            help="With --no-input: do not ask for the deployment name.")
        parser.add_argument("--no-input", action="store_true", help="Never prompt.")
        backup_commands.add_ssh_arguments(parser)
        backup_commands.add_host_side_arguments(parser)

    @cli.translate_errors
    def handle(self, *args, **options):
        write = self.stdout.write
        if not options["drill"] and not options["into_production"]:
            raise ConfigError("Nothing to do.", "Give --drill, or --backup KEY "
                                                "--into-production.")
        if options["into_production"] and not options["backup"]:
            raise ConfigError("--into-production needs --backup KEY.",
                              "Choose one from aws_backup --list.")
        if options["here"]:
            if options["drill"]:
                return backup_commands.here_drill(options, write)
            self._confirm(options, backup_commands.here_name(options), options["backup"])
            return backup_commands.here_restore(options, write)
        out_dir = cli.resolve_output(options)
        deployment = params.load(out_dir, None, cli.settings_layer())
        args = ["--backup", options["backup"]] if options["backup"] else []
        if options["drill"]:
            backup_commands.on_host(deployment, out_dir, options, "aws_restore",
                                    ["--drill"] + args, write)
            write(self.style.SUCCESS("Drill passed."))
            return
        self._confirm(options, deployment.name, options["backup"])
        backup_commands.on_host(deployment, out_dir, options, "aws_restore",
                                ["--into-production", "--yes", "--no-input"] + args
                                + (["--force"] if options["force"] else []), write)
        write(self.style.SUCCESS("Restored."))

    def _confirm(self, options, name, key):
        """The deployment name typed, or --yes with --no-input."""
        if options["no_input"]:
            if not options["yes"]:
                raise ConfigError("--into-production with --no-input needs --yes.",
                                  "Add --yes, or run it in a terminal to type the name.")
            return
        if not cli.can_ask(options):
            raise ConfigError("--into-production asks for the deployment name, and there is "
                              "no terminal to ask in.", "Add --yes --no-input.")
        self.stdout.write(f"This replaces the production database of {name} with {key}.")
        if cli.ask(f"Type the deployment name ({name}) to restore") != name:
            raise ConfigError("The name typed does not match: nothing was restored.",
                              "Type the deployment name exactly.")
