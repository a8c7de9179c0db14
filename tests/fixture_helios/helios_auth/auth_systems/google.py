"""Google sign-in (OAuth 2): needs GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET."""

from django.conf import settings

LOGIN_MESSAGE = "Log in with Google"


def credentials():
    return settings.GOOGLE_CLIENT_ID, settings.GOOGLE_CLIENT_SECRET
