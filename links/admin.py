"""The Django admin on the master: links with their clicks; every replica's state; the host
blocklist and the API keys of /create.

Links are made through PUT /create (or here, with an alias or a password if wanted) and totals
by consume_clicks. An admin can change a link's target, expiry and password (through
services.link_update, so the change reaches every replica as a new version of its record; each
change is kept in Django's admin log, old and new values, a password only as "set"), and take
it down or put it back; everything else is read-only. Each link's page shows its clicks over
time (a chart per hour and per day, by replica; CSV per day).
"""

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import F
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from links import protection, publishing, replicas, selectors, services
from links.admin_forms import LinkAddForm, LinkForm
from links.clicks_csv import clicks_csv
from links.models import (
    ApiKey,
    BlockedHost,
    ClickCounter,
    ConsumerPosition,
    Link,
    PendingLink,
    Replica,
)
from links.propagation_wait import link_propagation_now
from topics import longurls

# The link page's charts: per hour over the last 7 days, per day over the last 90.
CHART_HOURS = selectors.CHART_HOURS
CHART_DAYS = selectors.CHART_DAYS


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
    fields = ("incarnation", "node", "count", "bots", "updated_at")
    readonly_fields = fields
    ordering = ("node", "-updated_at")
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class PublishedFilter(admin.EmptyFieldListFilter):
    """published_at's "Empty" (not acknowledged by Kafka yet) read through the outbox relay's
    worklist (links.models.PendingLink), as the relay reads it: no index names published_at
    (links.models.Link.Meta), and a page of the newest links filtered by it would otherwise walk
    the primary key through every published link."""

    def queryset(self, request, queryset):
        if self.lookup_kwarg in self.used_parameters and self.lookup_val == "1":
            return queryset.filter(pk__in=PendingLink.objects.values("link_id"),
                                   published_at__isnull=True)
        return super().queryset(request, queryset)


@admin.register(Link)
class LinkAdmin(ReadOnlyAdmin):
    # "alias" last: the list's sort parameter (?o=N) numbers the columns.
    list_display = ("tinyurl", "longurl_short", "created_at", "clicks", "clicks_recent",
                    "human_clicks", "bot_clicks", "published", "enabled", "alias", "protected")
    list_filter = (("published_at", PublishedFilter),
                   ("disabled_at", admin.EmptyFieldListFilter), "alias", "created_at")
    actions = ["take_down", "put_back"]
    search_fields = ("=tinyurl", "longurl")
    date_hierarchy = "created_at"
    # Newest first by id, the order of creation: the primary key gives a page at any size.
    # created_at's BRIN index (links/models.py) serves date filters, not order.
    ordering = ("-id",)
    form = LinkForm
    # A password: set or removed by LinkForm's own fields; shown only as whether there is one.
    readonly_fields = ("tinyurl", "alias", "protected", "created_at", "published_at",
                       "disabled_at", "state_version", "clicks", "human_clicks", "bot_clicks",
                       "clicks_by_replica", "kinds_by_replica")
    fields = (*readonly_fields[:2], "longurl", "expires_at", "protected", "password",
              "password_remove", *readonly_fields[3:])
    inlines = [ClickCounterInline]
    show_full_result_count = False  # COUNT(*) over millions of links on every page is slow
    change_form_template = "admin/links/link/change_form.html"

    def get_queryset(self, request):
        return selectors.links_with_recent_clicks(
            super().get_queryset(request), since=selectors.clicks_recent_since())

    # Sortable like `clicks`: a difference of two columns of the row, no join.
    @admin.display(description="human clicks", ordering=F("clicks") - F("bot_clicks"))
    def human_clicks(self, obj: Link) -> int:
        return obj.clicks - obj.bot_clicks

    @admin.display(description="clicks, last 24 h", ordering="clicks_recent")
    def clicks_recent(self, obj: Link) -> int:
        return obj.clicks_recent

    def get_urls(self):
        csv_view = self.admin_site.admin_view(self.clicks_csv_view)
        return [path("<path:object_id>/clicks.csv", csv_view, name="links_link_clicks_csv"),
                *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        link = self.get_object(request, object_id)
        if link is not None:
            now = timezone.now()
            hourly, daily = (selectors.link_clicks_series(link_id=link.pk, unit=unit,
                                                          slots=slots, now=now)
                             for unit, slots in (("hour", CHART_HOURS), ("day", CHART_DAYS)))
            extra_context["clicks_charts"] = {
                "hourly": hourly.as_chart(label_format="%a %d %H:00"),
                "daily": daily.as_chart(label_format="%Y-%m-%d"),
            }
            extra_context["clicks_csv_url"] = reverse("admin:links_link_clicks_csv",
                                                      args=[link.pk])
            # "live on N of M replicas" (links/propagation.py), from this process' follower.
            extra_context["propagation"] = link_propagation_now(link=link)
        return super().change_view(request, object_id, form_url, extra_context)

    def clicks_csv_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The link's clicks per day (UTC), one row a day with clicks: day, total, then one
        column per replica."""
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        link = get_object_or_404(Link, pk=object_id)
        series = selectors.link_clicks_daily_all(link_id=link.pk)
        response = HttpResponse(clicks_csv(series, unit="day"),
                                content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="clicks-{link.tinyurl}.csv"'
        return response

    @admin.display(description="long URL")
    def longurl_short(self, obj: Link) -> str:
        return obj.longurl if len(obj.longurl) <= 100 else obj.longurl[:97] + "..."

    @admin.display(boolean=True, description="reached Kafka", ordering="published_at")
    def published(self, obj: Link) -> bool:
        return obj.published_at is not None

    @admin.display(boolean=True, description="password")
    def protected(self, obj: Link) -> bool:
        return obj.password_hash is not None

    @admin.display(boolean=True, description="enabled", ordering="disabled_at")
    def enabled(self, obj: Link) -> bool:
        return obj.disabled_at is None

    def has_add_permission(self, request, obj=None) -> bool:
        # Made as PUT /create/bulk makes one (LinkAddForm: links_create_many), on every replica.
        return request.user.has_perm("links.add_link")

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:  # `alias` is the form's own field, not the model's (not editable)
            kwargs.update(form=LinkAddForm, fields=LinkAddForm.Meta.fields)
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        return LinkAddForm.FIELDS if obj is None else self.fields

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def get_inline_instances(self, request, obj=None):
        # A new link has no counters, and the add form makes it in its check (no formset after).
        return [] if obj is None else super().get_inline_instances(request, obj)

    def has_change_permission(self, request, obj=None) -> bool:
        # Superusers, or staff with "Can change link": LinkForm's fields and the takedowns only.
        return request.user.has_perm("links.change_link")

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        # Django wraps a POST in a transaction; link_update must be the outermost one (it
        # publishes after its own commit), so the form is handled without that wrapper. The
        # admin log entry is written after link_update has committed.
        return self._changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj: Link, form, change: bool) -> None:
        """Through services.link_update: a new state version, published to every replica. An
        added link was made by LinkAddForm's check already (links_create_many): `obj` becomes it."""
        if not change:
            obj.__dict__.update({f.attname: getattr(form.created, f.attname)
                                 for f in Link._meta.concrete_fields})
            obj._state.adding = False
            return
        changes = form.link_changes()  # a password as link_update takes it
        if not changes:
            return
        try:
            services.link_update(link=obj, **changes)
        except publishing.LinkPublishError:
            self.message_user(request, "Changed here; Kafka is unavailable, so the replicas "
                              "will follow when it is back (outbox).", messages.WARNING)
        except ValidationError as exc:  # another link took this longurl since the form's check,
            # or the link is at the largest state version (services.link_update)
            self.message_user(request, f"Not changed: {exc.messages[0]}", messages.ERROR)
        obj.refresh_from_db()

    def construct_change_message(self, request, form, formsets, add=False) -> str:
        """The admin log's entry: every changed field with its old and new value (a password
        as "set" or "removed" only: admin_forms.PasswordParts)."""
        if not form.changed_data:
            return "No fields changed."
        return (f"Changed {'; '.join(form.changed_parts())} (published as version "
                f"{form.instance.state_version}).")

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
            except publishing.LinkPublishError:
                pending += 1
            except ValidationError as exc:  # a change no replica could take (link_update)
                self.message_user(request, f"{link.tinyurl} not changed: {exc.messages[0]}",
                                  messages.ERROR)
                continue
            self.log_change(request, link, "Taken down." if disabled else "Put back.")
        verb = "taken down" if disabled else "put back"
        if done:
            self.message_user(request, f"{done} link(s) {verb} on every replica.")
        if pending:
            self.message_user(request, f"{pending} link(s) {verb} here; Kafka is unavailable, "
                              "so the replicas will follow when it is back (outbox).",
                              messages.WARNING)

    @admin.display(description="clicks by replica")
    def clicks_by_replica(self, obj: Link) -> str:
        # By the node label: each counter under the replica that last reported it, plus the
        # folded counters of ended incarnations (links/pruning.py) under theirs.
        totals = selectors.link_clicks_by_node(link_id=obj.pk)
        return ", ".join(f"{node}: {total}" for node, total in totals.items()) or "none yet"

    @admin.display(description="human / bot clicks by replica")
    def kinds_by_replica(self, obj: Link) -> str:
        by_node = selectors.link_clicks_get(link=obj).by_node
        return ", ".join(f"{n}: {k.human} / {k.bot}" for n, k in by_node.items()) or "none yet"


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
        result = services.links_take_down_blocked(blocked=queryset)
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


@admin.register(Replica)
class ReplicaAdmin(ReadOnlyAdmin):
    """Every replica's state, from the statuses they publish (links/replicas.py)."""

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_staff and (
            request.user.has_perm("links.view_replica") or request.user.is_superuser)

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        view = replicas.replicas_view()
        context = {
            **self.admin_site.each_context(request),
            "title": "Replicas",
            "opts": self.model._meta,
            "view": view,
            "missing_seconds": int(settings.SHORTENER_REPLICA_MISSING_SECONDS),
            "status_seconds": settings.SHORTENER_STATUS_SECONDS,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/links/replica/change_list.html", context)
