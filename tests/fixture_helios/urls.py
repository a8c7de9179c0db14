"""Root URLconf: the apps, and the static trees served straight from the source tree."""

import os

from django.conf import settings
from django.urls import include, path, re_path
from django.views.static import serve


def _static(prefix, directory):
    """Serve ``ROOT_PATH/directory`` under the URL ``/prefix``."""
    return re_path(
        r'^%s(?P<path>.*)$' % prefix,
        serve,
        {'document_root': os.path.join(settings.ROOT_PATH, directory)},
    )


urlpatterns = [
    path('auth/', include('helios_auth.urls')),
    path('helios/', include('helios.urls')),
    _static('booth/', 'heliosbooth'),
    _static('verifier/', 'heliosverifier'),
    # The more specific prefixes come first: /static/ alone catches the rest.
    _static('static/auth/', 'helios_auth/media'),
    _static('static/helios/', 'helios/media'),
    _static('static/', 'server_ui/media'),
    path('', include('server_ui.urls')),
]
