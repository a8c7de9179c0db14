"""Development login: anyone may log in as anyone. Registered only while DEBUG is on."""

LOGIN_MESSAGE = "Log in as any user (development only)"


def allowed(request):
    """As in Helios: only with DEBUG on, and then for a request to a local host name (or
    while the test runner runs)."""
    from django.conf import settings

    if not settings.DEBUG:
        return False
    host = request.get_host().split(":")[0]
    return getattr(settings, "TESTING", False) or host in ("localhost", "127.0.0.1",
                                                            "testserver")
