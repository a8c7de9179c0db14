"""Deployment parameters: one record per deployment, with command flags on top.

The source of truth is ``deployment.json`` in the output directory (``deploy/`` by
default). ``aws_configure`` writes it; ``aws_provision`` and ``aws_check`` read it. The
layers, lowest first:

1. built-in defaults (some depend on the OS, e.g. the SSH user and the broker);
2. the optional ``HELIOS_AWS`` dict in Django settings (same keys as the fields below);
3. what ``aws_configure`` recorded in ``deployment.json``;
4. command flags.

Secrets (the Google client secret, an external database URL, SES access keys) are never
recorded here: they live only in the 0600 ``.env`` beside it.
"""

import dataclasses
import difflib
import ipaddress
import json
import re
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from .errors import ConfigError
from .files import read_text, write_atomic

RECORD_NAME = "deployment.json"
DEFAULT_OUTPUT = "deploy"

AL2_END_OF_SUPPORT = (
    "Amazon Linux 2 reached end of support on 2026-06-30 and has no Python 3.13, "
    "which Helios requires"
)

# What each supported OS implies on the host.
OS_PROFILES = {
    "al2023": {
        "label": "Amazon Linux 2023",
        "ssm_parameter": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}",
        "ssh_user": "ec2-user",
        "broker": "redis",
        "web_user": "nginx",
        "python": "python3.13",
    },
    "debian13": {
        "label": "Debian 13 (trixie)",
        "ssm_parameter": "/aws/service/debian/release/13/latest/{debian_arch}",
        "ssh_user": "admin",
        "broker": "rabbitmq",
        "web_user": "www-data",
        "python": "python3.13",
    },
}

BROKERS = ("redis", "rabbitmq")
BROKER_URLS = {
    "redis": "redis://localhost:6379/0",
    "rabbitmq": "amqp://localhost",
}
ARCHES = {"x86_64": "amd64", "arm64": "arm64"}

# Helios's login back ends. devlogin is refused: it lets anyone log in as anyone.
AUTH_SYSTEMS = (
    "password", "google", "github", "gitlab", "facebook", "twitter", "linkedin", "yahoo",
    "ldap", "cas", "clever",
)
HELIOS_DEFAULT_AUTH = "ldap,password,google,facebook"

DOMAIN_RE = re.compile(
    r"^(?=.{4,253}$)(?:(?!-)[a-z0-9-]{1,63}(?<!-)\.)+(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})$"
)
INSTANCE_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
POSIX_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
ENV_VALUE_RE = re.compile(r"^[^'\\\n\r]*$")


def _field(default, help, flag=None, choices=None, metavar=None):
    return dataclasses.field(
        default=default,
        metadata={"help": help, "flag": flag, "choices": choices, "metavar": metavar},
    )


@dataclasses.dataclass
class Deployment:
    """What is deployed, where and how. Empty strings mean "derive a default"."""

    name: str = _field("helios", "Deployment name, used in AWS names and tags.")
    domain: str = _field("", "Public host name of the Helios site, e.g. vote.example.org.")
    email: str = _field("", "Sender address for Helios mail (becomes DEFAULT_FROM_EMAIL).")
    from_name: str = _field("Helios", "Sender name (DEFAULT_FROM_NAME).")
    region: str = _field("us-east-1", "AWS region.")
    os: str = _field("al2023", "Host operating system.", choices=("al2023", "debian13"))
    arch: str = _field("x86_64", "CPU architecture.", choices=tuple(ARCHES))
    instance_type: str = _field("t3.small", "EC2 instance type.")
    volume_size: int = _field(16, "Root volume size in GiB (encrypted gp3).")
    ssh_user: str = _field("", "SSH login user on the host (default: the OS's cloud user).")
    ssh_cidr: str = _field("", "Who may reach SSH (port 22), e.g. 203.0.113.7/32.")
    ssh_public_key: str = _field("", "Public key file to import as the EC2 key pair.")
    app_dir: str = _field("/srv/helios", "Application directory on the host.")
    service_user: str = _field("helios", "Unprivileged user that runs Helios on the host.")
    broker: str = _field("", "Celery broker (default: redis on al2023, rabbitmq on debian13).",
                         choices=BROKERS)
    auth_systems: str = _field("", "Comma-separated login systems (default: the project's).")
    google_client_id: str = _field("", "Google OAuth client id, when google login is enabled.")
    ses_credentials: str = _field("role", "How the host gets SES credentials.",
                                  choices=("role", "keys"))
    backup_days: int = _field(35, "Days the nightly backups are kept in S3.")
    # For local rehearsals and tests: move the host's system paths and ports.
    host_prefix: str = _field("", "Put every host path under this directory (rehearsals).")
    http_port: int = _field(80, "Port nginx serves HTTP on.")
    https_port: int = _field(443, "Port nginx serves HTTPS on.")

    # Derived values, always computed from the fields above.

    @property
    def os_profile(self):
        return OS_PROFILES[self.os]

    @property
    def effective_ssh_user(self):
        return self.ssh_user or self.os_profile["ssh_user"]

    @property
    def effective_broker(self):
        return self.broker or self.os_profile["broker"]

    @property
    def broker_url(self):
        return BROKER_URLS[self.effective_broker]

    @property
    def auth_list(self):
        return [s for s in self.auth_systems.split(",") if s]

    @property
    def url(self):
        return f"https://{self.domain}"

    @property
    def tag_value(self):
        return self.name

    def as_record(self):
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Deployment)}


def flag_name(field_name):
    return "--" + field_name.replace("_", "-")


def add_deployment_arguments(parser, names=None):
    """Add one flag per deployment field (or per name in ``names``) to an argparse parser."""
    for name in names or FIELDS:
        field = FIELDS[name]
        kwargs = {
            "dest": name,
            "default": None,
            "help": field.metadata["help"],
        }
        if field.type in (int, "int"):
            kwargs["type"] = int
        parser.add_argument(flag_name(name), **kwargs)


def add_output_argument(parser):
    parser.add_argument(
        "--output", default=None, metavar="DIR",
        help=f"Directory of the deployment's files (default: {DEFAULT_OUTPUT}/ in the project).",
    )


def output_dir(option, project_root):
    return Path(option) if option else Path(project_root) / DEFAULT_OUTPUT


def read_record(out_dir):
    """The parameters recorded in ``out_dir``, or ``None`` when there is no record."""
    path = Path(out_dir) / RECORD_NAME
    text = read_text(path)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(
            f"{path} is not valid JSON ({exc}).",
            "Fix the file by hand or delete it and run aws_configure again.",
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a JSON object.",
                          "Delete it and run aws_configure again.")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"{path} has unknown keys: {', '.join(unknown)}.",
            "Remove them; aws_configure --help lists the parameters.",
        )
    return data


def write_record(out_dir, deployment):
    text = json.dumps(deployment.as_record(), indent=2, sort_keys=True) + "\n"
    return write_atomic(Path(out_dir) / RECORD_NAME, text, mode=0o644)


def build(layers):
    """Merge dicts of field values (lowest first, ``None`` meaning unset) and validate."""
    values = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if key not in FIELDS:
                raise ConfigError(f"Unknown deployment parameter {key!r}.",
                                  f"Known parameters: {', '.join(FIELDS)}.")
            if value is not None:
                values[key] = value
    deployment = Deployment(**values)
    validate(deployment)
    return deployment


def load(out_dir, overrides=None, settings_layer=None):
    """Parameters for a command that needs a configured deployment."""
    record = read_record(out_dir)
    if record is None:
        raise ConfigError(
            f"No deployment is recorded in {out_dir}.",
            "Run `manage.py aws_configure --domain ... --email ...` first "
            "(or pass the --output directory it wrote to).",
        )
    return build([settings_layer, record, overrides])


def validate(d):
    """Raise ConfigError for the first invalid value, naming the flag and the fix."""
    if d.os == "al2":
        raise ConfigError(f"--os al2 is refused: {AL2_END_OF_SUPPORT}.",
                          "Use --os al2023 (the default) or --os debian13.")
    for name, field in FIELDS.items():
        choices = field.metadata["choices"]
        value = getattr(d, name)
        if choices and value and value not in choices:
            raise ConfigError(
                f"{flag_name(name)} {value!r} is not supported.",
                f"Choose one of: {', '.join(choices)}.",
            )
    if not NAME_RE.match(d.name):
        raise ConfigError(
            f"--name {d.name!r} is not a valid deployment name.",
            "Use 1-40 lowercase letters, digits and dashes, starting with a letter.",
        )
    if d.domain:
        validate_domain(d.domain)
    if d.email:
        try:
            validate_email(d.email)
        except ValidationError:
            raise ConfigError(f"--email {d.email!r} is not a valid e-mail address.",
                              "Give the sender address, e.g. elections@example.org.")
    validate_region(d.region)
    if not INSTANCE_TYPE_RE.match(d.instance_type):
        raise ConfigError(f"--instance-type {d.instance_type!r} is not an instance type name.",
                          "Use a name like t3.small or t4g.medium.")
    if not isinstance(d.volume_size, int) or not 8 <= d.volume_size <= 16384:
        raise ConfigError(f"--volume-size {d.volume_size!r} is out of range.",
                          "Give a size in GiB between 8 and 16384.")
    if d.ssh_cidr:
        validate_cidr(d.ssh_cidr)
    for name in ("ssh_user", "service_user"):
        value = getattr(d, name)
        if value and not POSIX_USER_RE.match(value):
            raise ConfigError(f"{flag_name(name)} {value!r} is not a valid user name.",
                              "Use lowercase letters, digits, '_' and '-'.")
    if d.service_user == "root":
        raise ConfigError("--service-user root is refused: Helios must not run as root.",
                          "Keep the default (helios) or name another unprivileged user.")
    if not d.app_dir.startswith("/") or d.app_dir.rstrip("/") in ("", "/usr", "/etc", "/var"):
        raise ConfigError(f"--app-dir {d.app_dir!r} must be an absolute directory of its own.",
                          "Use e.g. /srv/helios.")
    if d.host_prefix and not d.host_prefix.startswith("/"):
        raise ConfigError(f"--host-prefix {d.host_prefix!r} must be an absolute path.",
                          "Give an absolute directory, or leave it empty on a real server.")
    for name in ("http_port", "https_port"):
        if not isinstance(getattr(d, name), int) or not 1 <= getattr(d, name) <= 65535:
            raise ConfigError(f"{flag_name(name)} must be a TCP port number.", "Use 1-65535.")
    if d.auth_systems:
        for system in d.auth_list:
            if system == "devlogin":
                raise ConfigError(
                    "--auth-systems devlogin is refused: it lets anyone log in as anyone.",
                    "Remove devlogin; it is for development only.",
                )
            if system not in AUTH_SYSTEMS:
                raise ConfigError(f"--auth-systems: unknown login system {system!r}.",
                                  f"Known systems: {', '.join(AUTH_SYSTEMS)}.")
    if not isinstance(d.backup_days, int) or not 1 <= d.backup_days <= 3650:
        raise ConfigError(f"--backup-days {d.backup_days!r} is out of range.",
                          "Give a number of days between 1 and 3650 (default 35).")
    for name in ("from_name", "google_client_id"):
        if not ENV_VALUE_RE.match(getattr(d, name)):
            raise ConfigError(f"{flag_name(name)} may not contain quotes, backslashes or "
                              "line breaks.", "Remove those characters.")


def validate_domain(domain):
    if not DOMAIN_RE.match(domain):
        raise ConfigError(
            f"--domain {domain!r} is not a valid host name.",
            "Give the public name of the site in lowercase, without scheme or path, "
            "e.g. vote.example.org.",
        )


def known_regions():
    import botocore.session

    session = botocore.session.get_session()
    regions = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("ec2", partition_name=partition))
    return regions


def validate_region(region):
    regions = known_regions()
    if region not in regions:
        close = difflib.get_close_matches(region, sorted(regions), n=3)
        hint = f"Did you mean {' or '.join(close)}?" if close else "Use e.g. us-east-1."
        raise ConfigError(f"--region {region!r} is not an AWS region.", hint)


def validate_cidr(cidr):
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ConfigError(
            f"--ssh-cidr {cidr!r} is not an IP network.",
            "Give your own address as a /32, e.g. 203.0.113.7/32.",
        )
    return network


def is_world(cidr):
    return validate_cidr(cidr).prefixlen == 0
