"""Settings of a miniature Helios-like project: a test fixture, not Helios.

This project imitates the traps of the real Helios voting server
(helios-server) that ``helios_aws`` has to live with, so the plugin's tests
meet them without a Helios checkout:

* the settings module is ``settings`` at the project root and reads nothing
  but ``os.environ``, through ``get_from_env``; booleans are true only for
  the string ``'1'``;
* any command-line word exactly ``test`` sets ``TESTING`` and makes every
  variable fall back to its default;
* the defaults are unsafe for production (``DEBUG`` defaults to on, the
  secrets are placeholders);
* ``helios_auth`` imports this module directly (``import settings``), so an
  overlay settings module cannot change what it reads;
* ``INSTALLED_APPS`` is a hard-coded tuple, ``python-ldap`` is imported at
  the top, there is no ``django.contrib.staticfiles`` and no STATIC_ROOT:
  ``urls.py`` serves the static trees with ``django.views.static.serve``;
* CSRF is not left to ``CsrfViewMiddleware`` and HSTS comes from the
  project's own middleware, so ``check --deploy`` keeps reporting
  security.W003 and security.W004 on a well configured server;
* ``DATABASE_URL``, when set, always requires SSL;
* the URLconf has patterns starting with '/' (urls.W002), silenced by
  ``SILENCED_SYSTEM_CHECKS`` as Helios silences its own;
* ``FIXTURE_STARTUP_DELAY`` (seconds) makes every start of the project that
  slow, as the real Helios's imports are on a small server;
* logging goes to stderr from the start, so a Celery 5.6.1 worker logs a burst
  of RecursionError lines from its Django fix-up while starting, and works.
"""

import logging
import os
import sys

import ldap
from django_auth_ldap.config import LDAPSearch

TESTING = 'test' in sys.argv

# Helios's own URLconf has dozens of patterns starting with '/'.
SILENCED_SYSTEM_CHECKS = ['urls.W002']

# A slow start, as the real Helios's imports make every manage.py process on a small
# server (see helios_aws's host probes, which must budget for it).
if os.environ.get('FIXTURE_STARTUP_DELAY'):
    import time

    time.sleep(float(os.environ['FIXTURE_STARTUP_DELAY']))


def get_from_env(var, default):
    """Return the environment's value for ``var``, or ``default``.

    While the test runner runs, the environment is ignored altogether.
    """
    if not TESTING and var in os.environ:
        return os.environ[var]
    return default


ROOT_PATH = os.path.dirname(__file__)

# Voter files uploaded by administrators. As in Helios, with no separator: in a checkout
# at /srv/helios/current this is /srv/helios/currentmedia/, not .../current/media/.
MEDIA_ROOT = ROOT_PATH + "media/"

DEBUG = get_from_env('DEBUG', '1') == '1'

SECRET_KEY = get_from_env('SECRET_KEY', 'replaceme')

# Signs the links in e-mails that let a voter opt out of further mail.
EMAIL_OPTOUT_SECRET = get_from_env('EMAIL_OPTOUT_SECRET', 'replace-with-secure-random-key')

ALLOWED_HOSTS = get_from_env('ALLOWED_HOSTS', 'localhost').split(',')

# Error reports go to ADMIN_EMAIL, when there is one.
ADMIN_EMAIL = get_from_env('ADMIN_EMAIL', None)
ADMINS = [(get_from_env('ADMIN_NAME', ''), ADMIN_EMAIL)] if ADMIN_EMAIL else []
MANAGERS = ADMINS

# Unix socket, OS user: libpq's PGHOST, PGPORT, PGUSER, PGPASSWORD apply.
DATABASES = {'default': {'ENGINE': 'django.db.backends.postgresql', 'NAME': 'helios', 'CONN_MAX_AGE': 600}}

if get_from_env('DATABASE_URL', None):
    import dj_database_url

    # dj_database_url reads DATABASE_URL itself; SSL is required whatever the URL says.
    DATABASES['default'] = dj_database_url.config(conn_max_age=600, ssl_require=True)

DEFAULT_AUTO_FIELD = 'django.db.models.AutoField'

TIME_ZONE = 'America/Los_Angeles'
LANGUAGE_CODE = 'en-us'
USE_I18N = True
USE_TZ = False

if get_from_env('SSL', '0') == '1':
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    # TLS ends at the reverse proxy, which must say so in this header.
    SECURE_PROXY_SSL_HEADER = ('HTTP_X_FORWARDED_PROTO', 'https')

SESSION_ENGINE = 'django.contrib.sessions.backends.db'
SESSION_COOKIE_HTTPONLY = True

# Strict-Transport-Security comes from helios.security.HSTSMiddleware, which is
# always installed and sends the header only when STS is on; SECURE_HSTS_SECONDS
# stays unset.
STS = get_from_env('HSTS', '0') == '1'

# CSRF is checked by the views themselves, against a token kept in the session.
MIDDLEWARE = [
    'django.middleware.security.SecurityMiddleware',
    'helios.security.HSTSMiddleware',
    'django.middleware.clickjacking.XFrameOptionsMiddleware',
    'django.contrib.sessions.middleware.SessionMiddleware',
    'django.middleware.common.CommonMiddleware',
    'django.contrib.auth.middleware.AuthenticationMiddleware',
]

ROOT_URLCONF = 'urls'

TEMPLATES = [
    {
        'BACKEND': 'django.template.backends.django.DjangoTemplates',
        'DIRS': [],
        'APP_DIRS': True,
        'OPTIONS': {'debug': DEBUG},
    },
]

INSTALLED_APPS = (
    'django.contrib.auth',
    'django.contrib.contenttypes',
    'django.contrib.sessions',
    'helios_auth',
    'helios',
    'server_ui',
)

# The public addresses; they end up inside election data, so they must not
# change once elections exist.
URL_HOST = get_from_env('URL_HOST', 'http://localhost:8000').rstrip('/')
SECURE_URL_HOST = get_from_env('SECURE_URL_HOST', URL_HOST).rstrip('/')

SITE_TITLE = get_from_env('SITE_TITLE', 'Helios Voting')
HELP_EMAIL_ADDRESS = get_from_env('HELP_EMAIL_ADDRESS', 'help@heliosvoting.org')
MAIN_LOGO_URL = get_from_env('MAIN_LOGO_URL', '/static/logo.png')

DEFAULT_FROM_EMAIL = get_from_env('DEFAULT_FROM_EMAIL', 'ben@adida.net')
DEFAULT_FROM_NAME = get_from_env('DEFAULT_FROM_NAME', 'Ben for Helios')
SERVER_EMAIL = '%s <%s>' % (DEFAULT_FROM_NAME, DEFAULT_FROM_EMAIL)

AUTH_ENABLED_SYSTEMS = get_from_env('AUTH_ENABLED_SYSTEMS', 'ldap,password,google,facebook').split(',')
if DEBUG:
    AUTH_ENABLED_SYSTEMS = ['devlogin'] + AUTH_ENABLED_SYSTEMS
AUTH_DEFAULT_SYSTEM = get_from_env('AUTH_DEFAULT_SYSTEM', None)

GOOGLE_CLIENT_ID = get_from_env('GOOGLE_CLIENT_ID', '')
GOOGLE_CLIENT_SECRET = get_from_env('GOOGLE_CLIENT_SECRET', '')

FACEBOOK_APP_ID = get_from_env('FACEBOOK_APP_ID', '')
FACEBOOK_API_SECRET = get_from_env('FACEBOOK_API_SECRET', '')

GH_CLIENT_ID = get_from_env('GH_CLIENT_ID', '')
GH_CLIENT_SECRET = get_from_env('GH_CLIENT_SECRET', '')

GITLAB_CLIENT_ID = get_from_env('GITLAB_CLIENT_ID', '')
GITLAB_CLIENT_SECRET = get_from_env('GITLAB_CLIENT_SECRET', '')

LINKEDIN_CLIENT_ID = get_from_env('LINKEDIN_CLIENT_ID', '')
LINKEDIN_CLIENT_SECRET = get_from_env('LINKEDIN_CLIENT_SECRET', '')

# Only the eligibility look-up of the cas login; its server is fixed in its module.
CAS_USERNAME = get_from_env('CAS_USERNAME', '')
CAS_PASSWORD = get_from_env('CAS_PASSWORD', '')
CAS_ELIGIBILITY_URL = get_from_env('CAS_ELIGIBILITY_URL', '')
CAS_ELIGIBILITY_REALM = get_from_env('CAS_ELIGIBILITY_REALM', '')

# The ldap login (django-auth-ldap) is wired to a public test directory whose accounts
# and read-only bind password are published; none of this is read from the environment.
AUTH_LDAP_SERVER_URI = 'ldap://ldap.forumsys.com'
AUTH_LDAP_BIND_DN = 'cn=read-only-admin,dc=example,dc=com'
AUTH_LDAP_BIND_PASSWORD = 'password'
AUTH_LDAP_USER_SEARCH = LDAPSearch('dc=example,dc=com', ldap.SCOPE_SUBTREE, '(uid=%(user)s)')
AUTH_LDAP_USER_ATTR_MAP = {'first_name': 'givenName', 'last_name': 'sn', 'email': 'mail'}
AUTH_LDAP_BIND_AS_AUTHENTICATING_USER = True
AUTH_LDAP_ALWAYS_UPDATE_USER = False

EMAIL_HOST = get_from_env('EMAIL_HOST', 'localhost')
EMAIL_PORT = int(get_from_env('EMAIL_PORT', '2525'))
EMAIL_HOST_USER = get_from_env('EMAIL_HOST_USER', '')
EMAIL_HOST_PASSWORD = get_from_env('EMAIL_HOST_PASSWORD', '')
EMAIL_USE_TLS = get_from_env('EMAIL_USE_TLS', '0') == '1'

# Amazon SES through boto3's usual credential chain.
if get_from_env('EMAIL_USE_AWS', '0') == '1':
    EMAIL_BACKEND = 'django_ses.SESBackend'

# Everything logs to stderr from the moment settings are read, before Django or
# Celery configure logging; that includes Celery's start-up signal errors.
logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')

CELERY_BROKER_URL = get_from_env('CELERY_BROKER_URL', 'amqp://localhost')
CELERY_TASK_ALWAYS_EAGER = TESTING or get_from_env('CELERY_TASK_ALWAYS_EAGER', '0') == '1'

ROLLBAR_ACCESS_TOKEN = get_from_env('ROLLBAR_ACCESS_TOKEN', None)
if ROLLBAR_ACCESS_TOKEN:
    ROLLBAR = {
        'access_token': ROLLBAR_ACCESS_TOKEN,
        'environment': 'development' if DEBUG else 'production',
    }
