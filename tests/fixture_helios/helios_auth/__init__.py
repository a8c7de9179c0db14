"""The authentication app: login through the enabled authentication systems."""
