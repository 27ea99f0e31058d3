"""The Django admin for the master: links, read-only (a link's mapping never changes)."""

from django.contrib import admin

from links.models import Link


@admin.register(Link)
class LinkAdmin(admin.ModelAdmin):
    list_display = ("tinyurl", "longurl_short", "created_at", "published")
    list_filter = (("published_at", admin.EmptyFieldListFilter), "created_at")
    search_fields = ("=tinyurl", "longurl")
    date_hierarchy = "created_at"
    readonly_fields = ("tinyurl", "longurl", "created_at", "published_at")
    fields = readonly_fields
    show_full_result_count = False  # COUNT(*) over millions of links on every page is slow

    @admin.display(description="long URL")
    def longurl_short(self, obj: Link) -> str:
        return obj.longurl if len(obj.longurl) <= 100 else obj.longurl[:97] + "..."

    @admin.display(boolean=True, description="reached Kafka", ordering="published_at")
    def published(self, obj: Link) -> bool:
        return obj.published_at is not None

    def has_add_permission(self, request) -> bool:  # links are made through /create only
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
