"""OpenID 2.0 helpers used by the yahoo login: a helper package, not a login system."""

PROVIDER = "https://open.login.yahooapis.com/openid/op/auth"
