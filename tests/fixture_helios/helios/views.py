"""Views of the elections app."""

from django.http import JsonResponse

# A toy ElGamal group (p = 2q + 1, g of order q); constant, so no database is needed.
ELGAMAL_PARAMS = {"p": "1019", "q": "509", "g": "4"}


def election_params(request):
    """The cryptosystem parameters: a cheap answer that never touches the database."""
    return JsonResponse(ELGAMAL_PARAMS)
