"""LDAP login through django-auth-ldap, which reads the AUTH_LDAP_* settings from
django.conf.settings (so a settings overlay can point it at another directory)."""

LOGIN_MESSAGE = "Log in with my directory account"


def authenticate(request, username, password):
    """The Django user for a directory login, or None when the directory refuses it."""
    from django_auth_ldap.backend import LDAPBackend

    return LDAPBackend().authenticate(request, username=username, password=password)
