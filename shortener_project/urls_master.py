"""URLs of the master: the create API, the JSON API (/api/v1/) and the admin."""

from django.contrib import admin
from django.urls import path, re_path

from links import bulk, views
from links.api import errors as api_errors
from links.api.views import api
from runtime.metrics import metrics_view

urlpatterns = [
    path("create", views.create, name="create"),
    path("create/bulk", bulk.create_bulk, name="create_bulk"),
    path("metrics", metrics_view, name="metrics"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    # Anything else under /api/v1/: a 404 in the API's error shape, not Django's page.
    re_path(r"^api/v1/", api_errors.not_found),
]
