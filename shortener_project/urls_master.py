"""URLs of the master: the create API and the admin."""

from django.contrib import admin
from django.urls import path

from links import views

urlpatterns = [
    path("create", views.create, name="create"),
    path("admin/", admin.site.urls),
]
