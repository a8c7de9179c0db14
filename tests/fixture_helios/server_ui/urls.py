"""URLs of the front pages."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
]
