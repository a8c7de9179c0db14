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

import argparse
import dataclasses
import difflib
from email import _header_value_parser as header_parser
from email.errors import HeaderParseError
import functools
import ipaddress
import json
import posixpath
import re
import urllib.parse
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from . import envfile
from . import records
from .errors import ConfigError
from .files import read_text, write_atomic

RECORD_NAME = "deployment.json"
DEFAULT_OUTPUT = "deploy"

AL2_END_OF_SUPPORT = (
    "Amazon Linux 2 reached end of support on 2026-06-30 and has no Python 3.13, "
    "which Helios requires"
)

# The default OS is the one the test suite runs end to end (in a Debian 13 VM). Amazon
# Linux 2023's recipe is checked command by command but has not yet run on a real host.
DEFAULT_OS = "debian13"

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

# Every validator matches the whole value (fullmatch): a trailing newline never passes.
DOMAIN_RE = re.compile(
    r"(?=.{4,253}\Z)(?:(?!-)[a-z0-9-]{1,63}(?<!-)\.)+(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})"
)
INSTANCE_TYPE_RE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9-]+")
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,39}")
POSIX_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Host paths reach systemd units, nginx sites and root's shell: characters none of them
# treats specially (no blanks, %, ;, quotes, $, backslashes, braces or control characters).
HOST_PATH_RE = re.compile(r"(/[A-Za-z0-9._-]+)+")
# Never an application directory, nor a parent of one of these.
SYSTEM_DIRS = (
    "/bin", "/boot", "/dev", "/dev/shm", "/etc", "/home", "/lib", "/lib32", "/lib64",
    "/libx32", "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys",
    "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/lib64", "/usr/libexec", "/usr/local",
    "/usr/local/bin", "/usr/local/lib", "/usr/sbin", "/usr/share", "/var", "/var/cache",
    "/var/lib", "/var/lock", "/var/log", "/var/mail", "/var/run", "/var/spool", "/var/tmp",
    "/var/www",
)
# ...nor anything inside these: system-managed, virtual, volatile, or someone's home.
NOT_INSIDE = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32",
              "/proc", "/root", "/run", "/sbin", "/sys", "/tmp", "/usr/bin", "/usr/lib",
              "/usr/lib64", "/usr/libexec", "/usr/sbin", "/usr/share", "/var/run",
              "/var/tmp", "/var/lock")
# Accounts of the system, of the services Helios needs and the cloud images' login users
# (who may sudo): running Helios as one would hand it (and anything its dependencies'
# install scripts run) their powers. The host step also refuses any other account that
# exists on the server and is not one this tool made.
SYSTEM_USERS = ("root", "postgres", "nginx", "www-data", "redis", "valkey", "rabbitmq",
                "nobody", "daemon", "bin", "sys", "sshd", "ec2-user", "admin")
# git's scp-style form, [user@]host:path (a URL with a scheme is checked by its parts).
GIT_SCP_RE = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9._-]*@)?[A-Za-z0-9][A-Za-z0-9.-]*"
                        r":(?!//)[^\s:-]\S*")
GIT_REF_BAD_RE = re.compile(r"^-|^/|/$|//|\.\.|@\{|\.lock(?:/|$)|/\.|^\.|\.$|^@$"
                            r"|[\x00-\x20\x7f~^:?*\[\\]")


def _field(default, help, flag=None, choices=None, metavar=None, repeat=False):
    return dataclasses.field(
        default=default,
        metadata={"help": help, "flag": flag, "choices": choices, "metavar": metavar,
                  "repeat": repeat},
    )


class _JoinAction(argparse.Action):
    """A repeatable flag whose values are recorded as one comma-separated string."""

    def __call__(self, parser, namespace, values, option_string=None):
        before = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, f"{before},{values}" if before else values)


@dataclasses.dataclass
class Deployment:
    """What is deployed, where and how. Empty strings mean "derive a default"."""

    name: str = _field("helios", "Deployment name, used in AWS names and tags.")
    domain: str = _field("", "Public host name of the Helios site, e.g. vote.example.org.")
    email: str = _field("", "Sender address for Helios mail (becomes DEFAULT_FROM_EMAIL).")
    from_name: str = _field("Helios", "Sender name (DEFAULT_FROM_NAME).")
    region: str = _field("us-east-1", "AWS region.")
    os: str = _field(DEFAULT_OS, "Host operating system (default debian13: the one proven "
                     "end to end).", choices=("debian13", "al2023"))
    arch: str = _field("x86_64", "CPU architecture.", choices=tuple(ARCHES))
    instance_type: str = _field("t3.small", "EC2 instance type.")
    volume_size: int = _field(16, "Root volume size in GiB (encrypted gp3).")
    ssh_user: str = _field("", "SSH login user on the host (default: the OS's cloud user).")
    ssh_cidr: str = _field("", "Who may reach SSH (port 22), e.g. 203.0.113.7/32.")
    ssh_public_key: str = _field("", "Public key file to import as the EC2 key pair.")
    app_dir: str = _field("/srv/helios", "Application directory on the host.")
    service_user: str = _field("helios", "Unprivileged user that runs Helios on the host.")
    broker: str = _field("", "Celery broker (default: rabbitmq on debian13, redis on al2023).",
                         choices=BROKERS)
    auth_systems: str = _field("", "Comma-separated login systems (default: password plus "
                                   "each system whose credentials are given).")
    # Login systems' public settings (their secrets live only in the .env; see logins.py).
    google_client_id: str = _field("", "Google OAuth client id, when google login is enabled.")
    facebook_app_id: str = _field("", "Facebook app id, for facebook login.")
    github_client_id: str = _field("", "GitHub OAuth client id, for github login.")
    gitlab_client_id: str = _field("", "GitLab OAuth client id, for gitlab login.")
    linkedin_client_id: str = _field("", "LinkedIn OAuth client id, for linkedin login.")
    ldap_uri: str = _field("", "Your LDAP directory, for ldap login: ldaps://HOST[:PORT], or "
                               "ldap://HOST[:PORT] with --ldap-start-tls.")
    ldap_start_tls: bool = _field(False, "Upgrade ldap:// connections with StartTLS.")
    ldap_bind_dn: str = _field("", "DN the server binds as to look users up.")
    ldap_user_search_base: str = _field("", "Where users are looked up, e.g. "
                                            "ou=people,dc=example,dc=org.")
    ldap_user_filter: str = _field("(uid=%(user)s)", "LDAP filter finding a user by the name "
                                                     "typed at login.")
    ses_credentials: str = _field("role", "How the host gets SES credentials.",
                                  choices=("role", "keys"))
    backup_days: int = _field(35, "Days the nightly backups are kept in S3.")
    # For local rehearsals and tests: move the host's system paths and ports.
    host_prefix: str = _field("", "Put every host path under this directory (rehearsals).")
    http_port: int = _field(80, "Port nginx serves HTTP on.")
    https_port: int = _field(443, "Port nginx serves HTTPS on.")
    backup_lock: str = _field("governance", "How S3 Object Lock keeps each backup for "
                              "--backup-days: governance (the account's administrators can "
                              "lift it) or compliance (nobody can, the account's root "
                              "included).", choices=("governance", "compliance"))
    alert_email: str = _field("", "An address the deployment's alarms are sent to "
                                  "(repeatable; each confirms the mail AWS sends it).",
                              repeat=True)

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
        return [s.strip() for s in self.auth_systems.split(",") if s.strip()]

    @property
    def url(self):
        return f"https://{self.domain}"

    @property
    def tag_value(self):
        return self.name

    @property
    def os_summary(self):
        """One line for --plan: the OS and why it is (or is not) the default."""
        label = self.os_profile["label"]
        if self.os == DEFAULT_OS:
            return f"OS: {label} (the default: the test suite proves it end to end)."
        return (f"OS: {label} (not the default: its recipe is checked command by command but "
                f"has not run end to end here; --os {DEFAULT_OS} has).")

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
        elif field.type in (bool, "bool"):
            kwargs["action"] = argparse.BooleanOptionalAction
        if field.metadata.get("repeat"):
            kwargs["action"] = _JoinAction
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
    return records.check(data, record_schema(), str(path),
                         "Fix that field by hand (aws_configure --help lists the parameters "
                         "and their values), or delete the file and run aws_configure again.",
                         ConfigError)


def record_schema():
    return records.deployment_schema({name: f.default for name, f in FIELDS.items()})


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
                # A value of another type is never read as this one (true is no address).
                records.check({key: value}, record_schema(), "deployment parameters",
                              f"Give {flag_name(key)} as {type(FIELDS[key].default).__name__}.",
                              ConfigError)
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
                          "Use --os debian13 (the default) or --os al2023.")
    for name, field in FIELDS.items():
        choices = field.metadata["choices"]
        value = getattr(d, name)
        if choices and value and value not in choices:
            raise ConfigError(
                f"{flag_name(name)} {value!r} is not supported.",
                f"Choose one of: {', '.join(choices)}.",
            )
    if not NAME_RE.fullmatch(d.name):
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
    if not INSTANCE_TYPE_RE.fullmatch(d.instance_type):
        raise ConfigError(f"--instance-type {d.instance_type!r} is not an instance type name.",
                          "Use a name like t3.small or t4g.medium.")
    if not isinstance(d.volume_size, int) or not 8 <= d.volume_size <= 16384:
        raise ConfigError(f"--volume-size {d.volume_size!r} is out of range.",
                          "Give a size in GiB between 8 and 16384.")
    if d.ssh_cidr:
        validate_cidr(d.ssh_cidr)
    if d.ssh_user and not POSIX_USER_RE.fullmatch(d.ssh_user):
        raise ConfigError(f"--ssh-user {d.ssh_user!r} is not a valid user name.",
                          "Use lowercase letters, digits, '_' and '-'.")
    validate_service_user(d.service_user, d.effective_ssh_user)
    validate_host_path("--app-dir", d.app_dir, "Use a directory of its own, e.g. /srv/helios.")
    _refuse_system_dir("--app-dir", d.app_dir, inside=True)
    _refuse_layout_dir(d.app_dir)
    if d.host_prefix:
        validate_host_path("--host-prefix", d.host_prefix,
                           "Give an absolute directory, or leave it empty on a real server.")
        _refuse_system_dir("--host-prefix", d.host_prefix, inside=False)
    for name in ("http_port", "https_port"):
        value = getattr(d, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            raise ConfigError(f"{flag_name(name)} must be a TCP port number.", "Use 1-65535.")
    if d.http_port == d.https_port:
        raise ConfigError(f"--http-port and --https-port are both {d.http_port}.",
                          "nginx cannot serve HTTP and HTTPS on one port: give two ports.")
    if not isinstance(d.ldap_start_tls, bool):
        raise ConfigError(f"--ldap-start-tls must be true or false, not {d.ldap_start_tls!r}.",
                          "Give --ldap-start-tls or --no-ldap-start-tls.")
    for name in ("from_name", "google_client_id", "facebook_app_id", "github_client_id",
                 "gitlab_client_id", "linkedin_client_id", "ldap_uri", "ldap_bind_dn",
                 "ldap_user_search_base", "ldap_user_filter"):
        envfile.check_value(flag_name(name), getattr(d, name))
    if not isinstance(d.backup_days, int) or isinstance(d.backup_days, bool) or \
            not 1 <= d.backup_days <= 3650:
        raise ConfigError(f"--backup-days {d.backup_days!r} is out of range.",
                          "Give a number of days between 1 and 3650 (default 35).")
    validate_from_name(d.from_name, d.email or "elections@example.org")
    validate_alert_email(d.alert_email)


def validate_alert_email(value):
    for address in value.split(","):
        try:
            validate_email(address.strip())
        except ValidationError:
            if address.strip() or value.strip():
                raise ConfigError(f"--alert-email {address.strip()!r} is not an e-mail "
                                  "address.", "Give one address per --alert-email, e.g. "
                                  "--alert-email ops@example.org --alert-email me@example.org.")


def validate_from_name(name, email):
    """Helios sends mail from "NAME <EMAIL>": the name must come back whole from that
    header (no , ; < > @ quotes, backslashes or parentheses, which end or change it)."""
    try:
        mailbox, rest = header_parser.get_mailbox(f"{name} <{email}>")
        display = mailbox.display_name
    except (HeaderParseError, IndexError, ValueError):
        rest, display = "?", None
    if rest or (display or "") != " ".join(name.split()):
        raise ConfigError(
            f"--from-name {name!r} does not survive in the mail header "
            f"\"{name} <{email}>\" (it reads as {display!r}).",
            "Leave out , ; < > @ \" \\ ( ) [ ] from the sender name.")


def validate_host_path(flag, path, hint):
    """An absolute, normalised path of conservative characters (see HOST_PATH_RE)."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(f"{flag} {path!r} must be an absolute path.", hint)
    normal = posixpath.normpath(path)
    if (path.rstrip("/") or "/") != normal or "//" in path:
        raise ConfigError(f"{flag} {path!r} is not a normalised path (no '.', '..' or "
                          "'//' parts).", f"Did you mean {normal}?")
    if normal == "/":
        raise ConfigError(f"{flag} / is the root directory, the parent of every system "
                          "directory.", hint)
    if not HOST_PATH_RE.fullmatch(normal):
        raise ConfigError(
            f"{flag} {path!r} holds characters that systemd, nginx or the shell treat "
            "specially.", "Use only letters, digits, '.', '_', '-' and '/'.")


def _refuse_system_dir(flag, path, inside):
    normal = posixpath.normpath(path)
    for system in SYSTEM_DIRS:
        if system == normal or system.startswith(normal.rstrip("/") + "/"):
            raise ConfigError(f"{flag} {path!r} is (or holds) the system directory {system}.",
                              "Use a directory of its own, e.g. /srv/helios.")
    for system in NOT_INSIDE if inside else ():
        if normal.startswith(system + "/"):
            raise ConfigError(f"{flag} {path!r} is inside {system}, which is not a place "
                              "for an application (system-managed, temporary or a home).",
                              "Use a directory of its own, e.g. /srv/helios.")
    if inside and re.fullmatch(r"/home/[^/]+", normal):
        raise ConfigError(f"{flag} {path!r} is a home directory.",
                          "Use a directory of its own, e.g. /srv/helios.")


# Where the host half keeps what is not the application's (layout.HostLayout.state_dir and
# acme_root, host.steps.STATE_DIR and CACHE_DIR): the application directory may not be,
# hold or lie inside one of them, or a release could overwrite them or be pruned with them.
LAYOUT_DIRS = ("/var/lib/helios", "/var/lib/helios-aws", "/var/cache/helios-aws",
               "/var/www/acme")


def _refuse_layout_dir(path):
    normal = posixpath.normpath(path)
    for own in LAYOUT_DIRS:
        if normal == own or normal.startswith(own + "/") or own.startswith(normal + "/"):
            raise ConfigError(f"--app-dir {path!r} overlaps {own}, where helios-aws keeps "
                              "its own state on the server.",
                              "Use a directory of its own, e.g. /srv/helios.")


def validate_service_user(user, ssh_user):
    """The user Helios runs as: a name of its own, no system or service account."""
    if not user or not POSIX_USER_RE.fullmatch(user):
        raise ConfigError(f"--service-user {user!r} is not a valid user name.",
                          "Use lowercase letters, digits, '_' and '-' (default: helios).")
    if user in SYSTEM_USERS:
        raise ConfigError(
            f"--service-user {user} is refused: Helios must not run as root or as another "
            "system or service account; it (and the install scripts of its dependencies) "
            "would run with that account's powers.",
            "Keep the default (helios) or name another user of its own.")
    if user == ssh_user:
        raise ConfigError(
            f"--service-user {user} is refused: it is the SSH login user, who may run "
            "anything as root.",
            "Keep the default (helios) or name another user of its own.")


def validate_git_url(url):
    """A repository URL git cannot read as an option, nor as a local path or a helper
    transport: https://, ssh:// or scp-style user@host:path."""
    url = url or ""
    ok = not any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url)
    if "://" in url:
        try:
            parts = urllib.parse.urlsplit(url)
            host, _port = parts.hostname or "", parts.port  # a bad port raises ValueError
        except ValueError:
            ok = False
        else:
            ok = ok and parts.scheme in ("https", "ssh") and bool(host) and \
                not host.startswith("-") and not parts.netloc.startswith("-")
    else:
        ok = ok and bool(GIT_SCP_RE.fullmatch(url))
    if not ok:
        raise ConfigError(
            f"--git-url {shown_url(url)!r} is not a repository URL this tool deploys from.",
            "Give an https:// or ssh:// URL, or the scp-style user@host:path form; in a "
            "password, write /, ?, # and @ as %2F, %3F, %23 and %40.")


def shown_url(url):
    """``url`` as it may be shown: everything between the scheme and the last '@' (where a
    user and password are, whatever characters the password holds) masked."""
    url = str(url or "")
    scheme, sep, rest = url.rpartition("://")
    if "@" not in (rest if sep else url):
        return url
    return f"{scheme}{sep}***@{(rest if sep else url).rpartition('@')[2]}"


def tcp_port(flag):
    """An argparse type for ``flag``: a TCP port, 1-65535 (0 is no port, never 'default')."""
    def parse(text):
        try:
            port = int(text)
        except ValueError:
            port = None
        if port is None or not 1 <= port <= 65535:
            raise argparse.ArgumentTypeError(
                f"{flag} {text!r} is not a TCP port: give 1-65535 (leave it out for the "
                "default)")
        return port

    return parse


def validate_git_ref(ref):
    """A branch, tag or commit name as git check-ref-format allows it, never an option."""
    if not ref or GIT_REF_BAD_RE.search(ref):
        raise ConfigError(
            f"--git-ref {ref!r} is not a branch, tag or commit name.",
            "Give a branch or tag name (e.g. main, v4.2) or a 40-digit commit; names may "
            "not start with '-', contain '..', spaces, control characters or ~^:?*[\\.")


# Helios's development autologin (/helios/autologin logs the visitor in as the first site
# administrator) is open whenever URL_HOST contains one of these strings, anywhere.
DEVELOPMENT_URL_MARKERS = ("localhost", "127.0.0.1")


def validate_domain(domain):
    if not DOMAIN_RE.fullmatch(domain):
        raise ConfigError(
            f"--domain {domain!r} is not a valid host name.",
            "Give the public name of the site in lowercase, without scheme or path, "
            "e.g. vote.example.org.",
        )
    marker = next((m for m in DEVELOPMENT_URL_MARKERS if m in domain), None)
    if marker:
        raise ConfigError(
            f"--domain {domain} contains {marker!r}: Helios opens its development autologin "
            "(anyone becomes the first site administrator) when its URL contains that.",
            "Give a public name without it.")


@functools.lru_cache(maxsize=None)
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
        ) from None
    try:
        ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        raise ConfigError(
            f"--ssh-cidr {cidr!r} has host bits set: it is not the start of its network.",
            f"Did you mean {network}? (A single address is {cidr.split('/')[0]}/"
            f"{network.max_prefixlen}.)",
        ) from None
    return network


def is_world(cidr):
    return validate_cidr(cidr).prefixlen == 0
