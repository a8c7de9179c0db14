"""Yahoo login over OpenID 2.0 (through the openid helpers); it takes no credentials."""

from .openid import PROVIDER

OPENID_PROVIDER = PROVIDER
LOGIN_MESSAGE = "Log in with Yahoo"
