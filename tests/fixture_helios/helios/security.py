"""Security helpers of the elections app."""

from django.conf import settings

HSTS_HEADER_VALUE = "max-age=31536000; includeSubDomains; preload"


class HSTSMiddleware:
    """Send Strict-Transport-Security on every response while settings.STS is on.

    It stands in for Django's SECURE_HSTS_SECONDS, which stays unset, so
    ``check --deploy`` keeps warning (security.W004) although the header is sent.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if settings.STS:
            response["Strict-Transport-Security"] = HSTS_HEADER_VALUE
        return response
