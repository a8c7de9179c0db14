"""LinkedIn login (OAuth 2): needs LINKEDIN_CLIENT_ID and LINKEDIN_CLIENT_SECRET."""

LOGIN_MESSAGE = "Log in with LinkedIn"
