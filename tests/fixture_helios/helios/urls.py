"""URLs under /helios/."""

from django.urls import path

from . import views

urlpatterns = [
    path("elections/params", views.election_params, name="election@params"),
    path("voter-address", views.voter_address, name="election@voter-address"),
    path("autologin", views.admin_autologin),
]
