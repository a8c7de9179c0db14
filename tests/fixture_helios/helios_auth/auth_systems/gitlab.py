"""GitLab login (OAuth 2): needs GITLAB_CLIENT_ID and GITLAB_CLIENT_SECRET."""

from django.conf import settings

LOGIN_MESSAGE = "Log in with GitLab"


def credentials():
    return settings.GITLAB_CLIENT_ID, settings.GITLAB_CLIENT_SECRET
