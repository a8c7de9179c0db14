"""The login systems, by the name AUTH_ENABLED_SYSTEMS uses.

As in Helios, a system is a module registered here under its name (the LDAP one lives in
``ldapauth``); ``live`` exists but is not registered, ``openid`` is a helper package, and
``devlogin`` is registered only while DEBUG is on. A name enabled in AUTH_ENABLED_SYSTEMS
but missing here still gets a login URL, which then fails.
"""

from django.conf import settings

from . import cas, facebook, github, gitlab, google, ldapauth, linkedin, password, yahoo

AUTH_SYSTEMS = {}

AUTH_SYSTEMS['password'] = password
AUTH_SYSTEMS['google'] = google
AUTH_SYSTEMS['facebook'] = facebook
AUTH_SYSTEMS['github'] = github
AUTH_SYSTEMS['gitlab'] = gitlab
AUTH_SYSTEMS['linkedin'] = linkedin
AUTH_SYSTEMS['cas'] = cas
AUTH_SYSTEMS['ldap'] = ldapauth
AUTH_SYSTEMS['yahoo'] = yahoo

if settings.DEBUG:
    from . import devlogin

    AUTH_SYSTEMS['devlogin'] = devlogin

# Unfinished upstream, so left out of the registry:
# AUTH_SYSTEMS['live'] = live
