"""Development login: anyone may log in as anyone. Registered only while DEBUG is on."""

LOGIN_MESSAGE = "Log in as any user (development only)"
