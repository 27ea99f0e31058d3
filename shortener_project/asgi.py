"""ASGI entry point: `gunicorn shortener_project.asgi` with uvicorn's worker (gunicorn.conf.py
chooses it for a replica).

On a replica, `application` answers GET/HEAD /<tinyurl> itself (redirects/asgi.py) and hands
everything else to Django's ASGI application. On a master it is Django's ASGI application alone
(the master is served through WSGI, shortener_project/wsgi.py; this is for completeness).
"""

import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shortener_project.settings")
django_application = get_asgi_application()

from redirects.asgi import RedirectApp  # noqa: E402 - needs the settings loaded above
from shortener_project.roles import Role  # noqa: E402

if settings.ROLE is Role.REPLICA:
    application = RedirectApp(django_application)
else:
    application = django_application
