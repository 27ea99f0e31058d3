"""URLs of the master: the create API and the admin."""

from django.contrib import admin
from django.urls import path

from links import bulk, views
from runtime.metrics import metrics_view

urlpatterns = [
    path("create", views.create, name="create"),
    path("create/bulk", bulk.create_bulk, name="create_bulk"),
    path("metrics", metrics_view, name="metrics"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("admin/", admin.site.urls),
]
