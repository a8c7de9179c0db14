"""Views of the elections app."""

from django.conf import settings
from django.http import Http404, HttpResponseRedirect, JsonResponse

# A toy ElGamal group (p = 2q + 1, g of order q); constant, so no database is needed.
ELGAMAL_PARAMS = {"p": "1019", "q": "509", "g": "4"}


def election_params(request):
    """The cryptosystem parameters: a cheap answer that never touches the database."""
    return JsonResponse(ELGAMAL_PARAMS)


def voter_address(request):
    """The client address a cast vote would be stored with, as Helios's cast view reads it:
    the first entry of X-Forwarded-For when the header is there, else REMOTE_ADDR. The
    request's HTTP headers come back too, to show what the proxy passed on."""
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
    if forwarded:
        address = forwarded.split(",")[0].strip()
    else:
        address = request.META.get("REMOTE_ADDR")
    headers = {key: value for key, value in request.META.items() if key.startswith("HTTP_")}
    return JsonResponse({"cast_ip": address, "headers": headers})


def admin_autologin(request):
    """A developer's shortcut, as in Helios: on a site whose URL_HOST mentions localhost or
    127.0.0.1 (anywhere in the string), any visitor becomes the first site administrator."""
    if not any(marker in settings.URL_HOST for marker in ("localhost", "127.0.0.1")):
        raise Http404
    request.session["user"] = {"type": "password", "user_id": "admin"}
    return HttpResponseRedirect("/")
