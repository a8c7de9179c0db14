"""Accounts kept by the site itself (voters get theirs by e-mail)."""

LOGIN_MESSAGE = "Log in with a password"
