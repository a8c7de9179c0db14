"""The site's front pages."""
