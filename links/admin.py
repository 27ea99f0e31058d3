"""The Django admin on the master: links with their clicks, read-only; the host blocklist and
the API keys of /create.

Links are made through PUT /create and totals by consume_clicks; the admin only shows them.
"""

from django import forms
from django.contrib import admin, messages
from django.db.models import Sum
from django.template.response import TemplateResponse

from links import protection, services
from links.models import ApiKey, BlockedHost, ClickCounter, ConsumerPosition, Link
from shortener_project import longurls


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


# --- /create's protection: the host blocklist and API keys ------------------------------------


class BlockedHostForm(forms.ModelForm):
    host = forms.CharField(
        max_length=2000,
        help_text="A host in any spelling (Unicode or punycode, any case, with or without a "
                  "port), or a URL to take the host from. Its subdomains are blocked too.")

    class Meta:
        model = BlockedHost
        fields = ("host", "reason")

    def clean_host(self) -> str:
        try:
            return longurls.host_normalize(self.cleaned_data["host"])
        except longurls.LongurlError as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(BlockedHost)
class BlockedHostAdmin(admin.ModelAdmin):
    """/create refuses longurls on these hosts and their subdomains. Blocking does not touch
    links made before: the action "Take down every link to the selected hosts" does."""

    form = BlockedHostForm
    list_display = ("host", "unicode", "reason", "created_at")
    search_fields = ("host", "reason")
    actions = ["take_down_links"]
    readonly_fields = ("created_at",)

    @admin.display(description="as people read it")
    def unicode(self, obj: BlockedHost) -> str:
        return longurls.host_display(obj.host)

    def get_readonly_fields(self, request, obj=None):
        # A row is one host: to block another, add it (the unique, normalized host is the key).
        return ("host", "created_at") if obj is not None else ("created_at",)

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        protection.blocklist_cache_clear()

    def delete_model(self, request, obj) -> None:
        super().delete_model(request, obj)
        protection.blocklist_cache_clear()

    def delete_queryset(self, request, queryset) -> None:
        super().delete_queryset(request, queryset)
        protection.blocklist_cache_clear()

    def has_takedown_permission(self, request) -> bool:
        return request.user.has_perm("links.change_link")

    @admin.action(description="Take down every link to the selected hosts and their subdomains",
                  permissions=["takedown"])
    def take_down_links(self, request, queryset) -> None:
        result = protection.links_take_down_blocked(blocked=queryset)
        if result.done or not result.pending:
            self.message_user(request, f"{result.done} link(s) taken down on every replica.")
        if result.pending:
            self.message_user(request, f"{result.pending} link(s) taken down here; Kafka is "
                              "unavailable, so the replicas will follow when it is back "
                              "(outbox).", messages.WARNING)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys for PUT /create (needed with SHORTENER_CREATE_AUTH=key). Adding one shows its token
    once; only its hash is kept. Revoking is immediate."""

    list_display = ("name", "prefix", "created_at", "active")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("name", "prefix")
    actions = ["revoke"]
    fields = ("name", "prefix", "created_at", "revoked_at")

    @admin.display(boolean=True, description="active", ordering="revoked_at")
    def active(self, obj: ApiKey) -> bool:
        return obj.revoked_at is None

    def get_readonly_fields(self, request, obj=None):
        return ("prefix", "created_at", "revoked_at") + (("name",) if obj is not None else ())

    def get_fields(self, request, obj=None):
        return ("name",) if obj is None else self.fields

    def save_model(self, request, obj, form, change) -> None:
        if change:
            return  # nothing of a key can change; revoke it and make another
        key, token = protection.api_key_create(name=obj.name)
        obj.pk, obj.prefix, obj.digest, obj.created_at = (key.pk, key.prefix, key.digest,
                                                          key.created_at)
        obj._state.adding = False
        request._api_key_token = token  # for response_add, on this request only

    def response_add(self, request, obj, post_url_continue=None):
        # The token goes into this page only: not into a message, which would travel in a
        # cookie or the session until displayed.
        context = {**self.admin_site.each_context(request), "opts": self.opts, "key": obj,
                   "token": request._api_key_token, "title": "API key created"}
        return TemplateResponse(request, "admin/links/apikey/created.html", context)

    @admin.action(description="Revoke: /create refuses the selected keys (403)")
    def revoke(self, request, queryset) -> None:
        n = 0
        for key in queryset.filter(revoked_at__isnull=True):
            protection.api_key_revoke(key=key)
            n += 1
        self.message_user(request, f"{n} key(s) revoked.")
