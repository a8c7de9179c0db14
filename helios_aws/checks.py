"""Helios-aware system checks: the configuration problems ``check --deploy`` misses.

Helios reads its configuration from ``os.environ`` only (booleans are true only for the
string ``'1'``), and some of its modules read the root ``settings`` module directly, so
these checks look at the values Helios itself ends up with. Every check has a stable id
(``helios_aws.E001``...) that is never renumbered, a message constant and a hint; the
table is in ``docs/checks.md``. Those that only matter on a production server are
registered with ``deploy=True`` and so run with ``manage.py check --deploy``.
"""

import importlib.util
import ipaddress
import os
import stat
import sys
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.core.checks.security.base import (
    SECRET_KEY_MIN_LENGTH, SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)
from django.http.request import split_domain_port, validate_host

from . import logins, params
from .project import PLACEHOLDER_SENDERS, find_root

TAG = "helios_aws"

# Helios's own defaults for its secrets: a server running with them is not secret at all.
PLACEHOLDER_SECRETS = frozenset({"replaceme", "replace-with-secure-random-key", ""})
# The boolean variables Helios reads; it takes only the string '1' as true.
HELIOS_BOOLEANS = ("DEBUG", "SSL", "HSTS", "EMAIL_USE_AWS", "EMAIL_USE_TLS")
# Settings that Helios modules read from the root ``settings`` module, not django.conf.
RAW_SETTINGS = ("URL_HOST", "SECURE_URL_HOST", "AUTH_ENABLED_SYSTEMS")
# Celery broker transports and the client library each needs besides kombu.
BROKER_LIBRARIES = {
    "redis": "redis", "rediss": "redis", "sentinel": "redis",
    "amqp": "amqp", "amqps": "amqp", "pyamqp": "amqp",
    "librabbitmq": "librabbitmq",
    "sqs": "boto3",
}
LOCAL_HOSTS = frozenset({"localhost", "localhost.localdomain", ""})

E001 = Error(
    "DEBUG is on.",
    hint="Set DEBUG=0 in the .env: Helios turns DEBUG on when the variable is missing, "
         "shows tracebacks to visitors and enables the devlogin login.",
    id="helios_aws.E001",
)
E002 = Error(
    "SECRET_KEY is missing or a known placeholder.",
    hint="Put a random SECRET_KEY of 50+ characters in the .env (aws_configure generates "
         "one); never reuse Helios's default 'replaceme'.",
    id="helios_aws.E002",
)
E003 = Error(
    "EMAIL_OPTOUT_SECRET is missing or a known placeholder.",
    hint="Put a random EMAIL_OPTOUT_SECRET in the .env (aws_configure generates one): it "
         "signs the opt-out links in voters' mail, and Helios's default is public.",
    id="helios_aws.E003",
)
E004 = Error(
    "ALLOWED_HOSTS does not include the host of URL_HOST.",
    hint="Set ALLOWED_HOSTS to the site's domain in the .env, e.g. "
         "ALLOWED_HOSTS=vote.example.org; Django answers 400 to any other Host.",
    id="helios_aws.E004",
)
E005 = Error(
    "URL_HOST is not an https:// address without a path.",
    hint="Set URL_HOST=https://DOMAIN in the .env before the first election: it is stored "
         "in election data and mail links, and must not change afterwards.",
    id="helios_aws.E005",
)
E006 = Error(
    "SECURE_URL_HOST is not an https:// address without a path.",
    hint="Set SECURE_URL_HOST=https://DOMAIN in the .env (the same value as URL_HOST); "
         "login providers return to SECURE_URL_HOST/auth/after/.",
    id="helios_aws.E006",
)
E007 = Error(
    "HTTPS is not enforced: Helios's SSL setting is off.",
    hint="Set SSL=1 in the .env: it redirects to HTTPS, marks the session cookie secure "
         "and trusts nginx's X-Forwarded-Proto header.",
    id="helios_aws.E007",
)
E008 = Error(
    "DEFAULT_FROM_EMAIL is a placeholder address.",
    hint="Set DEFAULT_FROM_EMAIL in the .env to an address of your domain that SES has "
         "verified (aws_configure --email).",
    id="helios_aws.E008",
)
E009 = Error(
    "Google login is enabled without GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET.",
    hint="Set both in the .env (aws_configure --google-client-id and "
         "HELIOS_GOOGLE_CLIENT_SECRET), or remove google from AUTH_ENABLED_SYSTEMS.",
    id="helios_aws.E009",
)
E010 = Error(
    "The .env file can be read or written by users other than its owner.",
    hint="Run `chmod 600` on it: it holds SECRET_KEY and other secrets.",
    id="helios_aws.E010",
)
E011 = Error(
    "CELERY_BROKER_URL uses a transport the installed packages cannot use.",
    hint="Install the broker's client library in the project's environment (e.g. "
         "`pip install redis` for redis://), or use an amqp:// broker, which Helios ships "
         "support for.",
    id="helios_aws.E011",
)
E012 = Error(
    "The devlogin login system is enabled: anyone can log in as anyone.",
    hint="Remove devlogin from AUTH_ENABLED_SYSTEMS; Helios also adds it whenever DEBUG "
         "is on.",
    id="helios_aws.E012",
)
E013 = Error(
    "LDAP login is enabled without the deployment's own directory over TLS: the LDAP "
    "server is unset, several, Helios's public test directory, or reached in the clear; "
    "or its user filter is not a filter.",
    hint="Run aws_configure with --ldap-uri (ldaps://, or ldap:// with --ldap-start-tls), "
         "--ldap-bind-dn, --ldap-user-search-base and HELIOS_LDAP_BIND_PASSWORD, and use "
         "the helios_aws settings overlay; or remove ldap from AUTH_ENABLED_SYSTEMS.",
    id="helios_aws.E013",
)
E014 = Error(
    "A login system is enabled without its credentials.",
    hint="Put them in the .env (aws_configure --help lists each system's flag and HELIOS_* "
         "variable), or remove the system from AUTH_ENABLED_SYSTEMS.",
    id="helios_aws.E014",
)
E015 = Error(
    "AUTH_ENABLED_SYSTEMS names a login system the project does not have: Helios shows "
    "its login button, which answers 500.",
    hint="Remove it from AUTH_ENABLED_SYSTEMS; the project's systems are those its "
         "helios_auth/auth_systems package registers.",
    id="helios_aws.E015",
)
E016 = Error(
    "The deployment's .env could not be read, so Helios runs with its development defaults.",
    hint="Make it readable by the user running this (chmod 600, owned by that user) and valid "
         "UTF-8; aws_configure rewrites it.",
    id="helios_aws.E016",
)
E017 = Error(
    "A development switch of Helios is open: URL_HOST or SECURE_URL_HOST contains "
    "'localhost' or '127.0.0.1' (its autologin makes any visitor the first site "
    "administrator), or ALLOWED_HOSTS lets a local host name through (its devlogin).",
    hint="Set URL_HOST and SECURE_URL_HOST to https://DOMAIN and ALLOWED_HOSTS to DOMAIN in "
         "the .env (aws_configure writes them); choose a domain without those strings.",
    id="helios_aws.E017",
)
W001 = Warning(
    "HSTS is off: browsers are not told to insist on HTTPS.",
    hint="Set HSTS=1 in the .env: Helios's own middleware then sends "
         "Strict-Transport-Security.",
    id="helios_aws.W001",
)
W002 = Warning(
    "Mail does not go through Amazon SES.",
    hint="Set EMAIL_USE_AWS=1 in the .env (and AWS_SES_REGION_NAME) so Helios sends with "
         "django-ses and the instance role.",
    id="helios_aws.W002",
)
W003 = Warning(
    f"EMAIL_OPTOUT_SECRET is weak (under {SECRET_KEY_MIN_LENGTH} characters or under "
    f"{SECRET_KEY_MIN_UNIQUE_CHARACTERS} distinct ones).",
    hint="Replace it with a long random value; aws_configure generates 64 characters.",
    id="helios_aws.W003",
)
W004 = Warning(
    "DATABASE_URL points at a PostgreSQL on this machine over TCP, and Helios always "
    "requires SSL on DATABASE_URL connections.",
    hint="A local PostgreSQL usually has no SSL: remove DATABASE_URL to use the local "
         "server over its unix socket, or enable SSL on the server.",
    id="helios_aws.W004",
)
W005 = Warning(
    "A setting that Helios reads from its own settings module differs in the settings "
    "Django uses, so Helios does not see the overlay's value.",
    hint="Set URL_HOST, SECURE_URL_HOST and AUTH_ENABLED_SYSTEMS in the environment (.env), "
         "not in a settings module.",
    id="helios_aws.W005",
)
W006 = Warning(
    "A Helios boolean variable has a value other than '0' or '1', which Helios reads "
    "as off.",
    hint="Helios takes only the string '1' as true: write 1 or 0.",
    id="helios_aws.W006",
)


def helios_setting(name, default=None):
    """A setting as Helios's own modules see it.

    Some of them ``import settings`` (the project's root settings module) and read it
    directly, so a settings overlay does not reach them; read that module when it is
    loaded, else Django's settings.
    """
    module = sys.modules.get("settings")
    if module is not None and hasattr(module, name):
        return getattr(module, name)
    return getattr(settings, name, default)


def _with_detail(message, detail):
    """A copy of a message constant with the offending value(s) in the message."""
    return type(message)(f"{message.msg} ({detail})", hint=message.hint, obj=message.obj,
                         id=message.id)


def _is_https_url(url):
    parts = urlsplit(str(url or ""))
    return parts.scheme == "https" and bool(parts.hostname) and parts.path in ("", "/") \
        and not parts.query


def _is_helios():
    return hasattr(settings, "URL_HOST")


@register(Tags.security, TAG, deploy=True)
def check_debug(app_configs=None, **kwargs):
    return [E001] if settings.DEBUG else []


@register(Tags.security, TAG, deploy=True)
def check_secret_key(app_configs=None, **kwargs):
    try:
        secret = str(settings.SECRET_KEY)
    except ImproperlyConfigured:  # Django refuses an empty SECRET_KEY on access
        secret = ""
    return [E002] if secret in PLACEHOLDER_SECRETS else []


@register(Tags.security, TAG, deploy=True)
def check_optout_secret(app_configs=None, **kwargs):
    if not _is_helios():
        return []
    secret = str(helios_setting("EMAIL_OPTOUT_SECRET", ""))
    if secret in PLACEHOLDER_SECRETS:
        return [E003]
    if len(secret) < SECRET_KEY_MIN_LENGTH or len(set(secret)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS:
        return [W003]
    return []


@register(Tags.security, TAG, deploy=True)
def check_allowed_hosts(app_configs=None, **kwargs):
    host = urlsplit(str(helios_setting("URL_HOST", "") or "")).netloc
    if not host:
        return []
    domain, _ = split_domain_port(host.lower())
    if domain and validate_host(domain, settings.ALLOWED_HOSTS):
        return []
    return [_with_detail(E004, f"{domain or host} not in {', '.join(settings.ALLOWED_HOSTS)}")]


@register(Tags.security, TAG, deploy=True)
def check_url_hosts(app_configs=None, **kwargs):
    if not _is_helios():
        return []
    problems = []
    for name, message in (("URL_HOST", E005), ("SECURE_URL_HOST", E006)):
        value = helios_setting(name, "")
        if not _is_https_url(value):
            problems.append(_with_detail(message, f"{name}={value}"))
    return problems


@register(Tags.security, TAG, deploy=True)
def check_ssl(app_configs=None, **kwargs):
    if not _is_helios():
        return []
    enforced = settings.SECURE_SSL_REDIRECT and settings.SECURE_PROXY_SSL_HEADER
    return [] if enforced else [E007]


def hsts_enabled():
    """Whether Strict-Transport-Security is sent: Helios's HSTSMiddleware sends it while
    its STS setting (HSTS=1) is on; Django's SecurityMiddleware with SECURE_HSTS_SECONDS."""
    return bool(settings.SECURE_HSTS_SECONDS) or bool(helios_setting("STS", False))


@register(Tags.security, TAG, deploy=True)
def check_hsts(app_configs=None, **kwargs):
    if not _is_helios():
        return []
    return [] if hsts_enabled() else [W001]


@register(TAG, deploy=True)
def check_mail(app_configs=None, **kwargs):
    if not _is_helios():
        return []
    problems = []
    if not (str(settings.EMAIL_BACKEND).startswith("django_ses.")
            or settings.EMAIL_BACKEND == "helios_aws.mailer.PacedSESBackend"):
        problems.append(_with_detail(W002, f"EMAIL_BACKEND={settings.EMAIL_BACKEND}"))
    sender = str(settings.DEFAULT_FROM_EMAIL or "").strip().lower()
    if not sender or sender in PLACEHOLDER_SENDERS:
        problems.append(_with_detail(E008, f"DEFAULT_FROM_EMAIL={sender or '(empty)'}"))
    return problems


def _auth_systems():
    systems = helios_setting("AUTH_ENABLED_SYSTEMS", []) or []
    if isinstance(systems, str):
        systems = systems.split(",")
    return [str(s).strip() for s in systems]


@register(Tags.security, TAG, deploy=True)
def check_google(app_configs=None, **kwargs):
    if "google" not in _auth_systems():
        return []
    if helios_setting("GOOGLE_CLIENT_ID") and helios_setting("GOOGLE_CLIENT_SECRET"):
        return []
    return [E009]


def env_file_path():
    """The .env the settings were loaded from (the overlay records it), if any."""
    return getattr(settings, "HELIOS_AWS_ENV_FILE", None) or os.environ.get("HELIOS_ENV_FILE")


LOCAL_HOST_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1", "testserver", "*")


@register(Tags.security, TAG, deploy=True)
def check_development_switches(app_configs=None, **kwargs):
    # The values Helios's own modules read (raw settings) and Django's.
    found = []
    for name in ("URL_HOST", "SECURE_URL_HOST"):
        value = str(helios_setting(name, "") or "")
        found += [f"{name}={value} contains {m!r}" for m in params.DEVELOPMENT_URL_MARKERS
                  if m in value]
    hosts = [str(h).strip().lower() for h in getattr(settings, "ALLOWED_HOSTS", [])]
    found += [f"ALLOWED_HOSTS has {h}" for h in hosts
              if h in LOCAL_HOST_NAMES or h.endswith(".localhost")]
    return [_with_detail(E017, "; ".join(found))] if found else []


@register(Tags.security, TAG)
def check_env_file_read(app_configs=None, **kwargs):
    # The overlay refuses to start on an unreadable HELIOS_ENV_FILE; an unreadable default
    # .env (the operator's machine) it only skips, and records why here.
    error = getattr(settings, "HELIOS_AWS_ENV_FILE_ERROR", "")
    return [_with_detail(E016, error)] if error else []


@register(Tags.security, TAG, deploy=True)
def check_env_file_mode(app_configs=None, **kwargs):
    path = env_file_path()
    if not path:
        return []
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return []
    if stat.S_IMODE(mode) & 0o077:
        return [_with_detail(E010, f"{path} has mode {stat.S_IMODE(mode):04o}")]
    return []


def _is_local_address(host):
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@register(Tags.database, TAG, deploy=True)
def check_database_ssl(app_configs=None, **kwargs):
    # A unix socket is fine: libpq ignores sslmode=require on socket connections.
    problems = []
    for alias, database in settings.DATABASES.items():
        options = database.get("OPTIONS", {})
        host = str(database.get("HOST") or "")
        if options.get("sslmode") == "require" and host and not host.startswith("/") \
                and _is_local_address(host):
            problems.append(_with_detail(W004, f"database {alias!r} at {host}"))
    return problems


def _installed(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # imported already, by a loader that sets no __spec__ (kombu's)
        return True


def broker_problem(url):
    """Why the installed packages cannot use the broker ``url``, or None when they can."""
    scheme = str(url).split("://", 1)[0].split("+", 1)[0].lower()
    try:
        from kombu.transport import TRANSPORT_ALIASES
    except ImportError:
        return "kombu (installed with celery) is missing"
    if scheme not in TRANSPORT_ALIASES:
        return f"kombu has no {scheme!r} transport"
    library = BROKER_LIBRARIES.get(scheme)
    if library and not _installed(library):
        return f"{scheme}:// needs the {library!r} package, which is not installed"
    return None


@register(TAG, deploy=True)
def check_broker(app_configs=None, **kwargs):
    url = getattr(settings, "CELERY_BROKER_URL", None)
    if not url:
        return []
    problem = broker_problem(url)
    return [_with_detail(E011, problem)] if problem else []


@register(Tags.security, TAG, deploy=True)
def check_devlogin(app_configs=None, **kwargs):
    return [E012] if "devlogin" in _auth_systems() else []


@register(Tags.security, TAG, deploy=True)
def check_ldap_directory(app_configs=None, **kwargs):
    # What django-auth-ldap will do, judged as aws_configure judges its options: the
    # settings it reads (django.conf.settings, where the overlay's values are), and the
    # environment variables OpenLDAP itself obeys.
    if "ldap" not in _auth_systems():
        return []
    problems = logins.ldap_uri_problems(
        getattr(settings, "AUTH_LDAP_SERVER_URI", "") or "",
        bool(getattr(settings, "AUTH_LDAP_START_TLS", False)), name="AUTH_LDAP_SERVER_URI")
    if os.environ.get("LDAPTLS_REQCERT", "").strip().lower() in ("never", "allow", "try"):
        problems.append(f"LDAPTLS_REQCERT={os.environ['LDAPTLS_REQCERT']} lets anyone "
                        "between the server and the directory read the passwords")
    search = getattr(settings, "AUTH_LDAP_USER_SEARCH", None)
    filterstr = getattr(search, "filterstr", None)
    if filterstr is not None:
        problem = logins.ldap_filter_problem(filterstr, name="AUTH_LDAP_USER_FILTER")
        if problem:
            problems.append(problem)
    return [_with_detail(E013, " ".join(p.rstrip(".") + "." for p in problems))] \
        if problems else []


# Systems with a check of their own: google (E009), ldap (E013).
_OWN_CHECKS = frozenset({"google", "ldap"})


@register(Tags.security, TAG, deploy=True)
def check_login_credentials(app_configs=None, **kwargs):
    missing = []
    for name in _auth_systems():
        system = logins.SYSTEMS.get(name)
        if system is None or name in _OWN_CHECKS:
            continue
        keys = [key for _, key in system.ids] + [secret.env for secret in system.secrets]
        missing += [f"{name} without {key}" for key in keys if not helios_setting(key)]
    return [_with_detail(E014, "; ".join(missing))] if missing else []


@register(Tags.security, TAG, deploy=True)
def check_login_systems_exist(app_configs=None, **kwargs):
    offered = logins.project_systems(find_root())
    if offered is None:
        return []
    unknown = [name for name in _auth_systems() if name and name not in offered]
    return [_with_detail(E015, ", ".join(unknown))] if unknown else []


@register(TAG)
def check_overlay_trap(app_configs=None, **kwargs):
    module = sys.modules.get("settings")
    if module is None or settings.SETTINGS_MODULE == "settings":
        return []
    differing = [name for name in RAW_SETTINGS
                 if hasattr(module, name) and hasattr(settings, name)
                 and getattr(module, name) != getattr(settings, name)]
    return [_with_detail(W005, ", ".join(differing))] if differing else []


@register(TAG, deploy=True)
def check_booleans(app_configs=None, **kwargs):
    odd = [f"{name}={os.environ[name]}" for name in HELIOS_BOOLEANS
           if os.environ.get(name, "0") not in ("0", "1")]
    return [_with_detail(W006, ", ".join(odd))] if odd else []


# Every message this module can emit, in id order, with what passing it means: for the
# report of aws_check (which lists passed checks too) and the table in docs/checks.md.
MESSAGES = (
    (E001, "DEBUG is off"),
    (E002, "SECRET_KEY is set and not a placeholder"),
    (E003, "EMAIL_OPTOUT_SECRET is set and not a placeholder"),
    (E004, "ALLOWED_HOSTS includes the host of URL_HOST"),
    (E005, "URL_HOST is https://DOMAIN"),
    (E006, "SECURE_URL_HOST is https://DOMAIN"),
    (E007, "SSL is on (HTTPS redirect, secure cookie, proxy header)"),
    (E008, "DEFAULT_FROM_EMAIL is a real address"),
    (E009, "Google login, if enabled, has a client id and secret"),
    (E010, "The .env is private to its owner"),
    (E011, "The Celery broker's transport is installed"),
    (E012, "devlogin is not enabled"),
    (E013, "LDAP login, if enabled, uses the deployment's own directory"),
    (E014, "Every enabled login system has its credentials"),
    (E015, "Every enabled login system exists in the project"),
    (E016, "The .env was read"),
    (E017, "Helios's development switches are shut"),
    (W001, "HSTS is on"),
    (W002, "Mail goes through Amazon SES"),
    (W003, "EMAIL_OPTOUT_SECRET is strong"),
    (W004, "DATABASE_URL does not point at a local PostgreSQL over TCP"),
    (W005, "Helios's own settings module and Django's settings agree"),
    (W006, "Helios's boolean variables are 0 or 1"),
)
