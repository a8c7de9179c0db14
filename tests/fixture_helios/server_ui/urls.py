"""URLs of the front pages."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    # A leading '/' (never matched, as in Helios's own URLconf): Django's urls.W002,
    # which settings.py silences as Helios does.
    path("/home", views.home),
]
