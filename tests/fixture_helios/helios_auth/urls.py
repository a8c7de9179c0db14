"""URLs under /auth/: one login URL per enabled authentication system."""

from django.urls import path

from settings import AUTH_ENABLED_SYSTEMS

from . import views

urlpatterns = [
    path("url-host", views.url_host, name="auth@url-host"),
    path("systems", views.enabled_systems, name="auth@systems"),
    path("after/", views.after, name="auth@after"),
] + [
    path("%s/login" % system, views.start, {"system": system}, name="auth@%s-login" % system)
    for system in AUTH_ENABLED_SYSTEMS
]
