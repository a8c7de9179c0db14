"""Front page views."""

import secrets

from django.conf import settings
from django.shortcuts import render

from helios.models import Election


def home(request):
    """The home page: featured elections from the database, and a session for the visitor.

    Every anonymous visit stores a CSRF token in a new database session, as the
    views check CSRF themselves.
    """
    request.session.setdefault("csrf_token", secrets.token_hex(16))
    context = {
        "site_title": settings.SITE_TITLE,
        "logo_url": settings.MAIN_LOGO_URL,
        "help_email": settings.HELP_EMAIL_ADDRESS,
        "featured": list(Election.objects.filter(featured_p=True).order_by("-created_at")[:5]),
        "election_count": Election.objects.count(),
    }
    return render(request, "server_ui/index.html", context)
