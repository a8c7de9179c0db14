"""``aws_configure``: render every file the server needs and write what changed.

Everything is rendered and checked in memory first; only then are files written, each
atomically. A rendered file that was edited by hand since this tool wrote it is never
overwritten silently: the run stops before writing anything, unless ``force`` is given,
in which case the edited copy is kept beside it as ``NAME.edited``.
"""

import contextlib
import dataclasses
import json
import shlex
from pathlib import Path

from django.template import Context, Engine

from . import envfile, freeze, layout as layout_mod, logins, params, sealside
from .errors import ConfigError
from .files import check_writable, exclusive, read_text, refuse_symlinks, write_atomic

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
MANIFEST_NAME = "manifest.json"
ENV_NAME = ".env"
GITIGNORE = "# Secrets and machine state of this deployment: never commit them.\n" \
            ".env\n*.key\n*.pem\nstate.json\n*.log\n"

# Output file -> template. The keys are paths relative to the output directory.
ARTIFACTS = {
    "systemd/gunicorn.socket": "helios_aws/gunicorn.socket",
    "systemd/gunicorn.service": "helios_aws/gunicorn.service",
    "systemd/helios-celery.service": "helios_aws/helios-celery.service",
    "systemd/helios-certbot-renew.service": "helios_aws/helios-certbot-renew.service",
    "systemd/helios-certbot-renew.timer": "helios_aws/helios-certbot-renew.timer",
    "systemd/helios-backup.service": "helios_aws/helios-backup.service",
    "systemd/helios-backup.timer": "helios_aws/helios-backup.timer",
    "nginx/helios-http.conf": "helios_aws/nginx-http.conf",
    "nginx/helios-https.conf": "helios_aws/nginx-https.conf",
    "systemd/helios-seal.service": "helios_aws/helios-seal.service",
    "systemd/helios-seal.timer": "helios_aws/helios-seal.timer",
}
BROKER_UNITS = {
    ("al2023", "redis"): "valkey.service",  # AL2023's redis6 is past its end of life
    ("debian13", "redis"): "redis-server.service",
    ("al2023", "rabbitmq"): "rabbitmq-server.service",
    ("debian13", "rabbitmq"): "rabbitmq-server.service",
}
# nginx 1.25.1 replaced the `http2` parameter of `listen` (deprecated since, with a warning
# at every start) by the `http2 on;` directive, which older nginx rejects. Debian 13 ships
# nginx 1.26; Amazon Linux 2023 ships 1.24 (1.22 on its first images): the parameter.
HTTP2_DIRECTIVE = {"debian13": True, "al2023": False}
# Keys aws_configure manages in the .env (besides the generated secrets).
MANAGED_KEYS = (
    "DJANGO_SETTINGS_MODULE", "DEBUG", "SSL", "HSTS", "ALLOWED_HOSTS", "URL_HOST",
    "SECURE_URL_HOST", "EMAIL_USE_AWS", "AWS_SES_REGION_NAME", "DEFAULT_FROM_EMAIL",
    "DEFAULT_FROM_NAME", "HELP_EMAIL_ADDRESS", "CELERY_BROKER_URL", "AUTH_ENABLED_SYSTEMS",
    "HELIOS_MEDIA_ROOT",
) + logins.PUBLIC_KEYS

# Forwarding headers a client could send that Django, gunicorn, Helios or a library they
# load may read as the client's address, host, port or scheme. The nginx site drops every
# one; it sets X-Forwarded-For and X-Real-IP (the peer's address) and X-Forwarded-Proto
# itself.
DROPPED_FORWARDING_HEADERS = (
    "Forwarded", "Forwarded-For", "X-Forwarded", "X-Forwarded-Host", "X-Forwarded-Port",
    "X-Forwarded-Server", "X-Forwarded-Prefix", "X-Forwarded-Protocol", "X-Forwarded-Scheme",
    "X-Forwarded-Ssl", "X-Original-Forwarded-For", "X-Client-IP", "Client-IP",
    "True-Client-IP", "CF-Connecting-IP", "Fastly-Client-IP", "X-Cluster-Client-IP",
    "X-Originating-IP", "X-Remote-IP", "X-Remote-Addr", "X-Host", "X-Url-Scheme",
)


_engine = None


def engine():
    global _engine
    if _engine is None:
        _engine = Engine(dirs=[str(TEMPLATE_DIR)], autoescape=False)
    return _engine


def render(template_name, context):
    return engine().get_template(template_name).render(Context(context, autoescape=False))


@dataclasses.dataclass
class FileChange:
    path: str  # relative to the output directory
    action: str  # "create", "update", "unchanged", "edited"
    text: str
    mode: int = 0o644


@dataclasses.dataclass
class Result:
    out_dir: Path
    files: list
    env: envfile.Merge
    warnings: list
    dry_run: bool
    # deployment.json's keys this run adds or changes, each with (old, new); old is None
    # for a key the record did not hold.
    record: dict = dataclasses.field(default_factory=dict)

    @property
    def changed(self):
        return self.env.has_changes or bool(self.record) or any(
            f.action in ("create", "update") for f in self.files)


def record_changes(out_dir, deployment):
    """The deployment.json keys that writing ``deployment`` would add or change."""
    old = params.read_record(out_dir) or {}
    return {key: (old.get(key), value) for key, value in deployment.as_record().items()
            if key not in old or old[key] != value}


BACKUP_LOCK_WAIT = 2 * 3600


def template_context(deployment, project):
    layout = layout_mod.for_deployment(deployment, deployment.host_prefix)
    return {
        "d": deployment,
        "project": project,
        "layout": layout,
        "workers": 3,
        "broker_unit": BROKER_UNITS[(deployment.os, deployment.effective_broker)],
        "http2_directive": HTTP2_DIRECTIVE[deployment.os],
        "protect_home": not str(layout.root).startswith(("/home", "/root")),
        "http_port": deployment.http_port,
        "https_port": deployment.https_port,
        "https_port_suffix": "" if deployment.https_port == 443 else f":{deployment.https_port}",
        "dropped_forwarding_headers": DROPPED_FORWARDING_HEADERS,
        "settings_module": layout_mod.SETTINGS_MODULE,
        # How long the nightly backup waits for the deployment lock (a restore, say).
        "backup_lock_wait": BACKUP_LOCK_WAIT,
        "seal_args": shlex.join(freeze.seal_arguments(deployment)),
        "seal_url": sealside.PUBLISHED_PATH,
        "seal_dir": deployment.host_prefix.rstrip("/") + sealside.PUBLISH_DIR,
    }


def desired_env(deployment, systems, secrets):
    """The .env values the deployment needs with the login ``systems`` enabled; ``secrets``
    holds values given this run (a login secret is written only for an enabled system)."""
    url = deployment.url
    values = {
        "DJANGO_SETTINGS_MODULE": layout_mod.SETTINGS_MODULE,
        "DEBUG": "0",
        "SSL": "1",
        "HSTS": "1",
        "ALLOWED_HOSTS": deployment.domain,
        "URL_HOST": url,
        "SECURE_URL_HOST": url,
        "EMAIL_USE_AWS": "1",
        "AWS_SES_REGION_NAME": deployment.region,
        "DEFAULT_FROM_EMAIL": deployment.email,
        "DEFAULT_FROM_NAME": deployment.from_name,
        "HELP_EMAIL_ADDRESS": deployment.email,
        "CELERY_BROKER_URL": deployment.broker_url,
        "AUTH_ENABLED_SYSTEMS": ",".join(systems),
        # Helios builds MEDIA_ROOT as ROOT_PATH + "media/" (no separator: a sibling of the
        # release, not its media link); the overlay sets it to the shared directory.
        "HELIOS_MEDIA_ROOT": str(layout_mod.for_deployment(
            deployment, deployment.host_prefix).shared_media),
    }
    values.update(logins.env_values(deployment, systems))
    unused = logins.SECRET_KEYS - logins.secret_keys(systems)
    values.update({k: v for k, v in secrets.items() if v and k not in unused})
    return values


def known_secrets(secrets, existing_env):
    """The login secrets' .env keys with a value, given this run or already in the .env."""
    existing = envfile.parse(existing_env)
    return {key for key in logins.SECRET_KEYS if secrets.get(key) or existing.get(key)}


def read_manifest(out_dir):
    text = read_text(Path(out_dir) / MANIFEST_NAME)
    if not text:
        return {"files": {}, "env": {}}
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError(f"{Path(out_dir) / MANIFEST_NAME} is damaged.",
                          "Delete it; the next aws_configure run treats every existing "
                          "file as edited by hand and asks for --force.")
    return {"files": data.get("files", {}), "env": data.get("env", {})}


def plan_files(out_dir, rendered, manifest):
    changes = []
    for rel, text in rendered.items():
        current = read_text(Path(out_dir) / rel)
        if current is None:
            action = "create"
        elif current == text:
            action = "unchanged"
        elif manifest["files"].get(rel) == envfile.fingerprint(current):
            action = "update"
        else:
            action = "edited"
        changes.append(FileChange(rel, action, text))
    return changes


def configure(deployment, project, out_dir, secrets=None, dry_run=False, force=False):
    """Render and (unless ``dry_run``) write the deployment's files into ``out_dir``.

    ``secrets`` are .env values given explicitly this run (Google client secret, external
    DATABASE_URL...): they replace what the .env holds. Returns a :class:`Result`.
    """
    out_dir = Path(out_dir)
    _require(deployment)
    check_writable(out_dir)
    with contextlib.nullcontext() if dry_run else exclusive(out_dir, written_dirs(out_dir)):
        return _configure(deployment, project, out_dir, dict(secrets or {}), dry_run, force)


def written_dirs(out_dir):
    """The directories under ``out_dir`` that generated files go into."""
    return sorted({Path(out_dir) / Path(rel).parent for rel in ARTIFACTS})


def _configure(deployment, project, out_dir, secrets, dry_run, force):
    env_path = out_dir / ENV_NAME
    existing_env = read_text(env_path)
    systems = logins.require(deployment, project.login_systems,
                             known_secrets(secrets, existing_env))
    manifest = read_manifest(out_dir)
    warnings = []

    context = template_context(deployment, project)
    rendered = {rel: render(tpl, context) for rel, tpl in ARTIFACTS.items()}
    files = plan_files(out_dir, rendered, manifest)
    edited = [f.path for f in files if f.action == "edited"]
    if edited and not force:
        raise ConfigError(
            "These generated files were edited by hand: " + ", ".join(edited) + ".",
            "Move your changes into the deployment parameters, or re-run with --force to "
            "regenerate them (your copies are kept as NAME.edited).",
        )

    desired = desired_env(deployment, systems, secrets)
    merge = envfile.merge(existing_env, desired, manifest["env"], forced=set(secrets),
                          name=str(env_path))
    old_env = envfile.parse(existing_env, str(env_path))
    if "URL_HOST" in merge.changed:
        warnings.append(
            f"URL_HOST changes from {old_env['URL_HOST']} to {desired['URL_HOST']}: links in "
            "mail already sent and elections already created keep the old address. "
            "aws_provision refuses to deploy it while the server's database holds "
            "elections (each one's cast URL is part of its fingerprint)."
        )
    for key in merge.kept:
        if key not in envfile.SECRET_KEYS:
            warnings.append(f"{key} in .env was edited by hand; kept it (the parameters "
                            f"say {desired[key]!r}).")
    result = Result(out_dir, files, merge, warnings, dry_run,
                    record_changes(out_dir, deployment))
    if dry_run:
        return result

    refuse_symlinks([out_dir / rel for rel in ARTIFACTS] + [
        env_path, out_dir / ".gitignore", out_dir / params.RECORD_NAME, out_dir / MANIFEST_NAME])
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for change in files:
        if change.action == "unchanged":
            continue
        target = out_dir / change.path
        if change.action == "edited":
            write_atomic(target.with_name(target.name + ".edited"), read_text(target))
        write_atomic(target, change.text, mode=change.mode)
    if merge.has_changes or existing_env is None:
        write_atomic(env_path, merge.text, mode=0o600)
    else:
        env_path.chmod(0o600)
    if read_text(out_dir / ".gitignore") is None:
        write_atomic(out_dir / ".gitignore", GITIGNORE)
    if result.record:
        params.write_record(out_dir, deployment)
    new_manifest = {
        "files": {f.path: envfile.fingerprint(f.text) for f in files},
        "env": {**manifest["env"],
                **envfile.hashes_for(merge.text, set(MANAGED_KEYS) - set(merge.kept))},
    }
    write_atomic(out_dir / MANIFEST_NAME,
                 json.dumps(new_manifest, indent=2, sort_keys=True) + "\n")
    return result


def _require(deployment):
    missing = [params.flag_name(n) for n in ("domain", "email") if not getattr(deployment, n)]
    if missing:
        raise ConfigError(f"Missing {' and '.join(missing)}.",
                          "Give them as flags, e.g. --domain vote.example.org "
                          "--email elections@example.org.")
