"""LinkedIn login (OAuth 2): needs LINKEDIN_CLIENT_ID and LINKEDIN_CLIENT_SECRET."""

from django.conf import settings

LOGIN_MESSAGE = "Log in with LinkedIn"


def credentials():
    return settings.LINKEDIN_CLIENT_ID, settings.LINKEDIN_CLIENT_SECRET
