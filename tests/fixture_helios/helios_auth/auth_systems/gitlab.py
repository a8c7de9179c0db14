"""GitLab login (OAuth 2): needs GITLAB_CLIENT_ID and GITLAB_CLIENT_SECRET."""

LOGIN_MESSAGE = "Log in with GitLab"
