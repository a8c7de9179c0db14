"""Facebook login: needs FACEBOOK_APP_ID and FACEBOOK_API_SECRET."""

from django.conf import settings

LOGIN_MESSAGE = "Log in with Facebook"


def credentials():
    return settings.FACEBOOK_APP_ID, settings.FACEBOOK_API_SECRET
