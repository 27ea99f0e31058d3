"""URLs of a replica: the redirect, and nothing else."""

from django.urls import path, register_converter

from redirects import views
from runtime.metrics import metrics_view
from topics.records import TINYURL_RE


class TinyurlConverter:
    # A generated tinyurl or an alias. The reserved names have this shape too: their own paths
    # come first below, and the view answers 404 for any other spelling of them (/Metrics).
    regex = TINYURL_RE.pattern

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(TinyurlConverter, "tiny")

urlpatterns = [
    # Before the tinyurl pattern: these have a tinyurl's shape (and are never issued as one).
    path("metrics", metrics_view, name="metrics"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("<tiny:tinyurl>", views.redirect, name="redirect"),
]

handler404 = "redirects.views.not_found"
