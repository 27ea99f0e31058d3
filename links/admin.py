"""The Django admin on the master: links with their clicks, read-only.

Links are made through PUT /create and totals by consume_clicks; the admin only shows them.
"""

from django.contrib import admin, messages
from django.db.models import Sum

from links import services
from links.models import ClickCounter, ConsumerPosition, Link


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ClickCounterInline(admin.TabularInline):
    model = ClickCounter
    verbose_name = "counter"
    # A counter is one life (incarnation) of one replica's Redis; node is the replica that
    # last raised it (a label: a renamed node or two hosts on one Redis share the counter).
    verbose_name_plural = "clicks by counter incarnation (node: the replica that last reported it)"
    fields = ("incarnation", "node", "count", "updated_at")
    readonly_fields = fields
    ordering = ("node", "-updated_at")
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Link)
class LinkAdmin(ReadOnlyAdmin):
    list_display = ("tinyurl", "longurl_short", "created_at", "clicks", "published", "enabled")
    list_filter = (("published_at", admin.EmptyFieldListFilter),
                   ("disabled_at", admin.EmptyFieldListFilter), "created_at")
    actions = ["take_down", "put_back"]
    search_fields = ("=tinyurl", "longurl")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    fields = ("tinyurl", "longurl", "created_at", "published_at", "disabled_at", "clicks",
              "clicks_by_replica")
    readonly_fields = fields
    inlines = [ClickCounterInline]
    show_full_result_count = False  # COUNT(*) over millions of links on every page is slow

    @admin.display(description="long URL")
    def longurl_short(self, obj: Link) -> str:
        return obj.longurl if len(obj.longurl) <= 100 else obj.longurl[:97] + "..."

    @admin.display(boolean=True, description="reached Kafka", ordering="published_at")
    def published(self, obj: Link) -> bool:
        return obj.published_at is not None

    @admin.display(boolean=True, description="enabled", ordering="disabled_at")
    def enabled(self, obj: Link) -> bool:
        return obj.disabled_at is None

    def has_takedown_permission(self, request) -> bool:
        # The admin edits nothing else, so taking down and putting back is its own right:
        # superusers, or staff given "links | link | Can change link".
        return request.user.has_perm("links.change_link")

    @admin.action(description="Take down: every replica stops redirecting (404)",
                  permissions=["takedown"])
    def take_down(self, request, queryset) -> None:
        self._set_disabled(request, queryset, True)

    @admin.action(description="Put back: every replica redirects again",
                  permissions=["takedown"])
    def put_back(self, request, queryset) -> None:
        self._set_disabled(request, queryset, False)

    def _set_disabled(self, request, queryset, disabled: bool) -> None:
        done = pending = 0
        for link in queryset:
            try:
                services.link_set_disabled(link=link, disabled=disabled)
                done += 1
            except services.LinkPublishError:
                pending += 1
        verb = "taken down" if disabled else "put back"
        if done:
            self.message_user(request, f"{done} link(s) {verb} on every replica.")
        if pending:
            self.message_user(request, f"{pending} link(s) {verb} here; Kafka is unavailable, "
                              "so the replicas will follow when it is back (outbox).",
                              messages.WARNING)

    @admin.display(description="clicks by replica")
    def clicks_by_replica(self, obj: Link) -> str:
        # By the node label: each counter under the replica that last reported it.
        rows = (obj.click_counters.values("node").annotate(total=Sum("count")).order_by("node"))
        return ", ".join(f"{r['node']}: {r['total']}" for r in rows) or "none yet"


@admin.register(ConsumerPosition)
class ConsumerPositionAdmin(ReadOnlyAdmin):
    list_display = ("topic", "partition", "next_offset", "applied", "skipped_malformed",
                    "skipped_unknown", "updated_at")
