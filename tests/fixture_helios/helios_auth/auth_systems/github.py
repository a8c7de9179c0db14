"""GitHub login (OAuth 2): needs GH_CLIENT_ID and GH_CLIENT_SECRET."""

from django.conf import settings

LOGIN_MESSAGE = "Log in with GitHub"


def credentials():
    return settings.GH_CLIENT_ID, settings.GH_CLIENT_SECRET
