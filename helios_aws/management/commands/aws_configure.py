"""Generate every file the Helios server needs: .env, systemd units, nginx sites."""

from django.core.management.base import BaseCommand

from helios_aws import cli, configure, logins, params, project as project_mod
from helios_aws.engine import phase
from helios_aws.errors import ConfigError


class Command(BaseCommand):
    help = (
        "Write the deployment's .env, systemd units and nginx sites into the output "
        "directory (deploy/ by default), from the project's own config and the flags. "
        "Safe to re-run: existing secrets and hand edits are kept."
    )
    # This is the command that repairs the configuration: the system checks judge the
    # configuration as it is now (an unreadable .env, helios_aws.E016; DEBUG on), and
    # must not stop the command that fixes it.
    requires_system_checks = []

    def add_arguments(self, parser):
        params.add_output_argument(parser)
        params.add_deployment_arguments(parser)
        for secret in logins.SECRETS:
            parser.add_argument(secret.flag, dest=secret.option, default=None,
                                help=f"{secret.label} (better: the {secret.variable} "
                                     "environment variable).")
        parser.add_argument("--database-url", default=None,
                            help="An external PostgreSQL (Helios requires SSL on it). Leave "
                                 "unset for the local database over the unix socket.")
        parser.add_argument("--dry-run", action="store_true",
                            help="Show what would be written or changed; write nothing.")
        parser.add_argument("--force", action="store_true",
                            help="Regenerate files that were edited by hand (keeping copies).")
        parser.add_argument("--no-input", action="store_true",
                            help="Never prompt; fail when a required value is missing.")

    @cli.translate_errors
    def handle(self, *args, **options):
        project = project_mod.inspect()
        out_dir = cli.resolve_output(options)
        recorded = params.read_record(out_dir) or {}
        derived = {"email": project.default_from_email}
        layers = [cli.settings_layer(), recorded, cli.flag_values(options)]
        deployment = self._complete(derived, layers, options)
        secrets = self._secrets(options)
        if cli.can_ask(options):
            self._ask_login_secrets(deployment, project, out_dir, secrets)

        with phase("the writing of the deployment's files", "Each file was written whole "
                   "or not at all: run aws_configure again to finish."):
            result = configure.configure(deployment, project, out_dir, secrets=secrets,
                                         dry_run=options["dry_run"], force=options["force"])
        self._report(project, result, options["verbosity"])

    def _complete(self, derived, layers, options):
        # The project's AUTH_ENABLED_SYSTEMS is never a default: Helios's enables systems
        # without credentials and a public test directory (see logins.py).
        merged = {k: v for k, v in derived.items() if v}
        for layer in layers:
            merged.update({k: v for k, v in (layer or {}).items() if v is not None})
        for name in ("domain", "email"):
            if not merged.get(name) and cli.can_ask(options):
                with phase(f"the question for --{name}",
                           "Nothing was written; run aws_configure again."):
                    merged[name] = cli.ask(params.FIELDS[name].metadata["help"])
        if not merged.get("alert_email") and cli.can_ask(options):
            with phase("the question for --alert-email",
                       "Nothing was written; run aws_configure again."):
                merged["alert_email"] = ",".join(cli.ask(
                    "Addresses the alarms are sent to (separated by spaces; empty for "
                    "none)").replace(",", " ").split())
        return params.build([merged])

    def _ask_login_secrets(self, deployment, project, out_dir, secrets):
        existing = configure.read_text(out_dir / configure.ENV_NAME)
        known = configure.known_secrets(secrets, existing)
        for secret in logins.missing_secrets(deployment, project.login_systems, known):
            with phase(f"the question for the {secret.label}",
                       "Nothing was written; run aws_configure again."):
                value = cli.ask(secret.label, secret=True)
            if value:
                secrets[secret.env] = value

    def _secrets(self, options):
        secrets = {}
        for secret in logins.SECRETS:
            value = cli.secret_from(options, secret.option, secret.variable)
            if value:
                secrets[secret.env] = value
        database_url = cli.secret_from(options, "database_url", "HELIOS_DATABASE_URL")
        if database_url:
            if not database_url.startswith(("postgres://", "postgresql://")):
                raise ConfigError("--database-url must be a postgres:// URL.",
                                  "Give postgres://USER:PASSWORD@HOST:5432/helios (Helios "
                                  "connects to it with SSL required).")
            secrets["DATABASE_URL"] = database_url
        return secrets

    def _report_record(self, result):
        # deployment.json holds no secret (those live only in the .env): values are shown.
        name, record = params.RECORD_NAME, result.record
        if not record:
            return
        if all(old is None for old, _new in record.values()):
            self.stdout.write(f"{name}: {'would be created' if result.dry_run else 'created'}")
            return
        verb = "would change" if result.dry_run else "changed"
        self.stdout.write(f"{name}: {verb} " + ", ".join(
            f"{key} ({'unset' if old is None else repr(old)} -> {new!r})"
            for key, (old, new) in record.items()))

    def _report(self, project, result, verbosity):
        out = self.stdout
        if verbosity >= 2:
            out.write(f"Project: {project.root} ({project.wsgi}, Celery app "
                      f"{project.celery_app}, dependencies from "
                      f"{'uv.lock' if project.dependency_source == 'uv' else 'requirements.txt'}"
                      f", Python {project.python})")
            for alias in project.static:
                out.write(f"  static {alias.url} -> {alias.path}/")
        for warning in result.warnings:
            self.stderr.write(self.style.WARNING(f"Warning: {warning}"))
        env = result.env
        if env.added:
            out.write(f".env: {'would add' if result.dry_run else 'added'} "
                      f"{', '.join(env.added)}")
        if env.changed:
            out.write(f".env: {'would change' if result.dry_run else 'changed'} "
                      f"{', '.join(env.changed)}")
        self._report_record(result)
        labels = {"create": "created", "update": "updated", "edited": "regenerated (hand edit "
                  "kept as .edited)"}
        for change in result.files:
            if change.action == "unchanged":
                if verbosity >= 2:
                    out.write(f"unchanged {change.path}")
                continue
            label = labels[change.action]
            if result.dry_run:
                label = f"would be {label}"
            out.write(f"{change.path}: {label}")
        if not result.changed:
            out.write(self.style.SUCCESS(f"No changes: every file in {result.out_dir} is "
                                         "up to date."))
        elif result.dry_run:
            out.write(self.style.WARNING(f"Dry run: nothing was written to {result.out_dir}."))
        else:
            out.write(self.style.SUCCESS(f"Done. The deployment's files are in "
                                         f"{result.out_dir.resolve()}"))
