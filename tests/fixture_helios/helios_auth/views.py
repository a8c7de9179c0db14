"""Login views.

They read the root ``settings`` module itself rather than ``django.conf.settings``:
a settings overlay that redefines URL_HOST or SECURE_URL_HOST changes what Django
sees, not what these views see. Only the environment reaches both.
"""

from django.http import Http404, HttpResponse, HttpResponseRedirect, JsonResponse

import settings


def after_login_url():
    """Absolute URL the external identity providers send users back to."""
    return settings.SECURE_URL_HOST + "/auth/after/"


def url_host(request):
    """The site address as these views see it, as plain text."""
    return HttpResponse(settings.URL_HOST, content_type="text/plain")


def enabled_systems(request):
    """The authentication systems the URLconf was built for."""
    from .urls import AUTH_ENABLED_SYSTEMS

    return JsonResponse({"systems": AUTH_ENABLED_SYSTEMS})


def start(request, system):
    """Begin a login: send the user to the provider, which comes back to after_login_url().

    As in Helios, an enabled name with no login system behind it fails here (500)."""
    from .auth_systems import AUTH_SYSTEMS

    login_system = AUTH_SYSTEMS[system]  # KeyError for an unknown name: a 500
    if hasattr(login_system, "allowed") and not login_system.allowed(request):
        raise Http404
    request.session["auth_system_name"] = system
    request.session["auth_login_message"] = login_system.LOGIN_MESSAGE
    return HttpResponseRedirect(after_login_url())


def after(request):
    """Where a provider returns; the fixture only forgets the pending login."""
    request.session.pop("auth_system_name", None)
    return HttpResponseRedirect(settings.URL_HOST + "/")
