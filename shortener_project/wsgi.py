"""WSGI entry point for gunicorn: `gunicorn shortener_project.wsgi`.

On a master served by the project's worker (runtime/serving.py, chosen by gunicorn.conf.py),
PUT /create is answered in front of Django, on the event loop, in batches (links/asgi.py: the
worker serves `application.asgi_front` around Django's application on its thread pool); every
other request, and /create under any other server, by Django.
"""

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shortener_project.settings")
application = get_wsgi_application()

from shortener_project.roles import Role  # noqa: E402 - needs the settings loaded above

if settings.ROLE is Role.MASTER:
    from links.asgi import CreateApp  # noqa: E402

    application.asgi_front = CreateApp
