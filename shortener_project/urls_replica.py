"""URLs of a replica: the redirect, and nothing else."""

from django.urls import path, register_converter

from redirects import views
from runtime.metrics import metrics_view


class TinyurlConverter:
    regex = "[a-zA-Z0-9]{7}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(TinyurlConverter, "tiny")

urlpatterns = [
    # Before the tinyurl pattern: "metrics" has a tinyurl's shape (and is never issued as one).
    path("metrics", metrics_view, name="metrics"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("<tiny:tinyurl>", views.redirect, name="redirect"),
]

handler404 = "redirects.views.not_found"
