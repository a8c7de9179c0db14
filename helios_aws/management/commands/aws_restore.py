"""Prove a backup restores (the drill), or restore one into production."""

from django.core.management.base import BaseCommand

from helios_aws import backup_commands, cli, freeze, params, rootside
from helios_aws.errors import ConfigError


class Command(BaseCommand):
    help = (
        "--drill: restore the latest backup (or --backup KEY) into a scratch database on "
        "the server, check its checksums and row counts against its manifest, drop the "
        "scratch database and record the result. --backup KEY --into-production: restore "
        "into a new database and media directory, check them, then stop Helios, switch to "
        "them, migrate if needed and start Helios again; whole or not at all. --status: "
        "say which database serves after an interrupted restore."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        params.add_output_argument(parser)
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--drill", action="store_true",
                            help="Restore into a scratch database and compare (harmless).")
        action.add_argument("--into-production", action="store_true",
                            help="Replace the production database and files with --backup.")
        action.add_argument("--status", action="store_true",
                            help="Wait for a restore running on the server, finish or undo "
                                 "an interrupted one, and say which database serves.")
        parser.add_argument("--backup", default="", metavar="KEY",
                            help="The backup (as aws_backup --list shows it; default for "
                                 "--drill: the newest).")
        parser.add_argument("--force", action="store_true",
                            help="Restore into production even while an election is open "
                                 "(needs --reason; recorded).")
        parser.add_argument("--reason", default="",
                            help="Why the restore cannot wait (with --force).")
        parser.add_argument("--yes", action="store_true",
                            help="With --no-input: do not ask for the deployment name.")
        parser.add_argument("--no-input", action="store_true", help="Never prompt.")
        parser.add_argument("--object-version", default="", metavar="ID",
                            help="With --backup: restore (or drill) the backup as this "
                                 "version of its manifest.json describes it (aws_check "
                                 "aws.E024 names the first version of an overwritten "
                                 "backup).")
        backup_commands.add_ssh_arguments(parser)
        backup_commands.add_host_side_arguments(parser)

    @cli.translate_errors
    def handle(self, *args, **options):
        write = self.stdout.write
        if not (options["drill"] or options["into_production"] or options["status"]):
            raise ConfigError("Nothing to do.", "Give --drill, --status, or --backup KEY "
                                                "--into-production.")
        if options["into_production"] and not options["backup"]:
            raise ConfigError("--into-production needs --backup KEY.",
                              "Choose one from aws_backup --list.")
        if options["here"]:
            raise ConfigError("aws_restore has no side that runs through manage.py on the "
                              "server: root runs python -I -m helios_aws.rootside there.",
                              "Run aws_restore from your machine.")
        if options["object_version"]:
            if not options["backup"]:
                raise ConfigError("--object-version needs --backup KEY.",
                                  "Give the backup whose manifest.json has that version.")
            if not rootside.VERSION_RE.fullmatch(options["object_version"]):
                raise ConfigError(f"--object-version {options['object_version']!r} is not "
                                  "an S3 version id.",
                                  "Copy the id as aws_check aws.E024 or `aws s3api "
                                  "list-object-versions` shows it.")
        out_dir = cli.resolve_output(options)
        deployment = params.load(out_dir, None, cli.settings_layer())
        args = ["--backup", options["backup"]] if options["backup"] else []
        if options["object_version"]:
            args += ["--object-version", options["object_version"]]
        options["on_lock_wait"] = write
        if options["drill"]:
            backup_commands.on_host(deployment, out_dir, options, "drill", args, write)
            write(self.style.SUCCESS("Drill passed."))
            return
        if options["status"]:
            backup_commands.on_host(deployment, out_dir, options, "status", [], write)
            return
        freeze.check_options(options)
        self._confirm(options, deployment.name, options["backup"])
        freeze.guard_restore(deployment, out_dir, options, write)
        backup_commands.restore_on_host(deployment, out_dir, options,
                                        args + (["--force"] if options["force"] else []),
                                        write)
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
