"""Helios's settings plus helios-aws, for ``--settings`` or ``DJANGO_SETTINGS_MODULE``.

Helios reads its configuration from ``os.environ`` only, and some of its modules read the
root ``settings`` module directly (``import settings``), so values set in an overlay would
not reach them. This module therefore:

1. loads the deployment's .env into ``os.environ`` *before* importing the project's
   settings (values already in the environment win): the file named by
   ``HELIOS_ENV_FILE``, else ``deploy/.env`` in the project root, the file
   ``aws_configure`` writes by default (on the host, the units and every command set
   ``HELIOS_ENV_FILE`` to the deployed copy);
2. imports the project's root ``settings`` module;
3. appends ``helios_aws`` to ``INSTALLED_APPS``;
4. sets only what Helios never reads raw: ``MEDIA_ROOT`` (the shared media directory,
   ``HELIOS_MEDIA_ROOT`` in the .env), django-ses's region (and endpoint, when
   ``AWS_ENDPOINT_URL`` points at a local stand-in), the SES
   access key when the deployment uses one instead of an instance role, and
   django-auth-ldap's ``AUTH_LDAP_*`` settings (Helios hard-codes a public test
   directory there; here they come from the .env, and without a directory there none);
5. puts helios-aws's mail backend (:mod:`helios_aws.mailer`) in place of django-ses's.
"""

import importlib.util
import io
import os
import sys
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from helios_aws.configure import ENV_NAME
from helios_aws.params import DEFAULT_OUTPUT


def _env_file():
    explicit = os.environ.get("HELIOS_ENV_FILE")
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec("settings")
    root = Path(spec.origin).parent if spec and spec.origin else Path.cwd()
    return root / DEFAULT_OUTPUT / ENV_NAME


def _load(path):
    """Load ``path`` into os.environ. A file named by HELIOS_ENV_FILE (always, on the server:
    the units and every command set it) that is missing or cannot be read stops Helios,
    which would otherwise start with its development defaults (DEBUG on, the placeholder
    SECRET_KEY, devlogin). The default file, on the operator's machine, may not exist yet
    (aws_configure writes it); one that cannot be read is skipped with a warning, so that
    aws_configure can say what is wrong with it, and recorded for helios_aws.E016.

    The file is read here, not by django-environ: its read_env() takes a file it cannot
    open for an empty one, and only logs it."""
    try:
        content = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        if os.environ.get("HELIOS_ENV_FILE"):
            raise ImproperlyConfigured(
                f"HELIOS_ENV_FILE {path} does not exist: Helios would start with its "
                "development defaults, so it does not start. Run aws_provision (or "
                "aws_configure) to write it.")
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"cannot be read ({exc.strerror})" if isinstance(exc, OSError) else (
            f"is not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})")
        if os.environ.get("HELIOS_ENV_FILE"):
            raise ImproperlyConfigured(
                f"HELIOS_ENV_FILE {path} {problem}: Helios would start with its development "
                "defaults, so it does not start. Give the user Helios runs as read access "
                "(it is 0600, owned by that user), or run aws_provision.")
        sys.stderr.write(f"helios-aws: {path} {problem}; its values were not loaded.\n")
        return f"{path} {problem}"
    environ.Env.read_env(io.StringIO(content), overwrite=False)
    return ""


HELIOS_AWS_ENV_FILE = str(_env_file())
# Why the .env was not loaded, when it could not be (helios_aws.E016); "" when it was.
HELIOS_AWS_ENV_FILE_ERROR = _load(HELIOS_AWS_ENV_FILE)

from settings import *  # noqa: E402,F401,F403
from settings import INSTALLED_APPS as _PROJECT_APPS  # noqa: E402

if "helios_aws" not in _PROJECT_APPS:
    INSTALLED_APPS = tuple(_PROJECT_APPS) + ("helios_aws",)

# Helios builds MEDIA_ROOT as ROOT_PATH + "media/", with no separator: on the server that
# is a sibling of the release (releases/<id>media/), not the shared directory. The .env
# names the shared one.
if os.environ.get("HELIOS_MEDIA_ROOT"):
    MEDIA_ROOT = os.environ["HELIOS_MEDIA_ROOT"].rstrip("/") + "/"

AWS_SES_REGION_NAME = os.environ.get("AWS_SES_REGION_NAME", "us-east-1")
# django-ses builds its endpoint from the region and ignores boto3's AWS_ENDPOINT_URL;
# honour it (and the per-service variable) so a rehearsal against a local AWS works.
_endpoint = os.environ.get("AWS_ENDPOINT_URL_SES") or os.environ.get("AWS_ENDPOINT_URL")
if _endpoint:
    AWS_SES_REGION_ENDPOINT_URL = _endpoint
if os.environ.get("AWS_SES_ACCESS_KEY_ID"):
    AWS_SES_ACCESS_KEY_ID = os.environ["AWS_SES_ACCESS_KEY_ID"]
    AWS_SES_SECRET_ACCESS_KEY = os.environ.get("AWS_SES_SECRET_ACCESS_KEY", "")

# Helios's django-ses, paced under SES's sending rate across every process, retried when
# SES refuses, and each final failure recorded (helios_aws/mailer.py says why a backend).
# django-ses's own throttle counts one process's sends only: the pace replaces it.
if globals().get("EMAIL_BACKEND") == "django_ses.SESBackend":
    EMAIL_BACKEND = "helios_aws.mailer.PacedSESBackend"
    AWS_SES_AUTO_THROTTLE = None

# django-auth-ldap reads these from django.conf.settings. Helios's own point at a public
# test directory whose accounts are published: replace them all, with the deployment's
# own directory or with none (an empty server URI, which no login gets through).
AUTH_LDAP_SERVER_URI = os.environ.get("AUTH_LDAP_SERVER_URI", "")
AUTH_LDAP_BIND_DN = os.environ.get("AUTH_LDAP_BIND_DN", "")
AUTH_LDAP_BIND_PASSWORD = os.environ.get("AUTH_LDAP_BIND_PASSWORD", "")
AUTH_LDAP_START_TLS = os.environ.get("AUTH_LDAP_START_TLS") == "1"
if AUTH_LDAP_SERVER_URI:
    import ldap
    from django_auth_ldap.config import LDAPSearch

    AUTH_LDAP_USER_SEARCH = LDAPSearch(
        os.environ.get("AUTH_LDAP_USER_SEARCH_BASE", ""), ldap.SCOPE_SUBTREE,
        os.environ.get("AUTH_LDAP_USER_FILTER", "(uid=%(user)s)"))
