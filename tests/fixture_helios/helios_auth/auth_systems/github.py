"""GitHub login (OAuth 2): needs GH_CLIENT_ID and GH_CLIENT_SECRET."""

LOGIN_MESSAGE = "Log in with GitHub"
