"""Windows Live login: unfinished, so not registered in AUTH_SYSTEMS."""

LOGIN_MESSAGE = "Log in with Windows Live"
