"""Facebook login: needs FACEBOOK_APP_ID and FACEBOOK_API_SECRET."""

LOGIN_MESSAGE = "Log in with Facebook"
