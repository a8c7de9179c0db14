"""Google sign-in (OAuth 2): needs GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET."""

LOGIN_MESSAGE = "Log in with Google"
