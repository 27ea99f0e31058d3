"""The admin's forms for a link: LinkForm changes one (its target, expiry and password),
LinkAddForm makes one (a longurl, an optional alias, expiry and password) through the services
PUT /create/bulk runs, with the same checks and answers. A password is never shown again, nor
written to the admin's log (changed_parts): only its hash is kept (links/passwords.py)."""

from django import forms
from django.core.exceptions import ValidationError

from links import passwords, publishing, services, tinyurls, validation
from links.models import Link
from topics.passwords import PASSWORD_MAX_LENGTH


def _password_field(help_text: str) -> forms.CharField:
    # max_length checks the characters (code points) on the server, as the API does; the
    # page's maxlength, which a browser counts in UTF-16 code units (an emoji is two), is twice
    # the limit, so that every password the API accepts can be typed (as the replica's form,
    # redirects/answers.py). A longer one typed there is refused by max_length on the field.
    field = forms.CharField(required=False, strip=False, max_length=PASSWORD_MAX_LENGTH,
                            help_text=help_text, widget=forms.PasswordInput(render_value=False))
    field.widget.attrs["maxlength"] = str(2 * PASSWORD_MAX_LENGTH)
    return field


class PasswordParts:
    """The admin log's entry of a form: each changed field with its old and new value, a
    password only as "set" or "removed" (the log must never hold one)."""

    def changed_parts(self) -> list[str]:
        parts = []
        for name in self.changed_data:  # type: ignore[attr-defined]
            if name == "password":
                parts.append("password: set")
            elif name == "password_remove":
                parts.append("password: removed")
            else:
                parts.append(f"{name}: {self.initial.get(name)!s} -> "  # type: ignore[attr-defined]
                             f"{self.cleaned_data.get(name)!s}")  # type: ignore[attr-defined]
        return parts


class LinkForm(PasswordParts, forms.ModelForm):
    """What an admin may change of a link: its target, its expiry, its password."""

    # Not stripped: a longurl is validated exactly as /create receives it.
    longurl = forms.CharField(strip=False, widget=forms.TextInput(attrs={"size": 100}),
                              help_text="Validated like PUT /create; every replica redirects "
                                        "to the new target within about a second.")

    class Meta:
        model = Link
        fields = ("longurl", "expires_at")
        help_texts = {"expires_at": "UTC. After it every replica answers 410 Gone; a time "
                                    "already past ends the link at once. Empty: never."}

    password = _password_field("A new password: replicas then ask for it before the redirect "
                               "(browsers that gave the old one are asked again). Empty: "
                               "unchanged.")
    password_remove = forms.BooleanField(required=False, label="Remove the password",
                                         help_text="The link then redirects without asking.")

    def clean_password(self) -> str:
        value = self.cleaned_data["password"]
        if value:
            try:
                passwords.password_checked(value)
            except passwords.PasswordRefused as exc:
                raise forms.ValidationError(exc.message) from None
        return value

    def clean(self):
        data = super().clean()
        if data.get("password") and data.get("password_remove"):
            raise forms.ValidationError("Set a new password or remove it, not both.")
        if not self.errors and self.instance.pk is not None:
            # What link_update would refuse for "same longurl, same tinyurl" (a second public
            # link, two links with one password, a protected link moved without it), shown on
            # the form before anything is saved or logged; link_update checks again.
            changes = self.link_changes()
            refusal = services.link_change_refusal(
                link=self.instance, longurl=changes.get("longurl", services.KEEP),
                password=changes.get("password"))
            if refusal is not None:
                self.add_error("password" if refusal.code.startswith("password") else "longurl",
                               refusal.messages[0])
        return data

    def link_changes(self) -> dict:
        """services.link_update's arguments for what this form changed."""
        # Not Meta.fields: the admin's form class is made with every field of the page.
        changes = {name: self.cleaned_data[name] for name in self.changed_data
                   if name in ("longurl", "expires_at")}
        if self.cleaned_data.get("password"):
            changes["password"] = self.cleaned_data["password"]
        elif self.cleaned_data.get("password_remove"):
            changes["password"] = ""
        return changes

    def clean_longurl(self) -> str:
        # The one check of every target (link_update calls it again, as the guard of every
        # path; here it puts the reason on the field before anything is saved).
        # Whether another link has it is clean()'s question: the answer depends on the password.
        return validation.longurl_check(self.cleaned_data["longurl"])


class LinkAddForm(PasswordParts, forms.ModelForm):
    """A new link, made as PUT /create/bulk makes one (services.links_create_many). The link is
    made by this form's check, not by a later save: whether an alias is taken is known only
    when it is inserted (the unique index decides, links/inserts.py), so the insert is the
    check, and its refusal goes on the field it concerns. The admin's add view runs outside a
    transaction (LinkAdmin.changeform_view), as the service's durable commit needs."""

    longurl = forms.CharField(strip=False, widget=forms.TextInput(attrs={"size": 100}),
                              help_text="Validated like PUT /create.")
    alias = forms.CharField(
        required=False, strip=False, max_length=200,
        help_text="Optional: the tinyurl to give the link, 3-64 characters of A-Z a-z 0-9 _ -, "
                  "case-sensitive; not a path the service answers itself (admin, api, "
                  "metrics, ... in any case). Empty: a generated 7-character tinyurl, the one "
                  "every caller of this longurl shares.")
    password = _password_field("Optional: replicas ask for it before the redirect. Only a "
                               "new link takes one (not a longurl's existing link).")
    created: Link | None = None  # the link made by clean()

    # The add page's fields, in order (LinkAdmin.get_fields). Meta.fields leaves `alias` and
    # `password` out: neither is an editable field of Link, so each is this form's own.
    FIELDS = ("longurl", "alias", "expires_at", "password")

    class Meta:
        model = Link
        fields = ("longurl", "expires_at")
        help_texts = LinkForm.Meta.help_texts

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        expires_at = data.get("expires_at")
        try:
            if expires_at is not None:  # the bulk API's rules: in the future, not too far
                expires_at = services.expires_at_parse(expires_at.isoformat())
            outcome = services.links_create_many([services.CreateItem(
                longurl=data["longurl"], expires_at=expires_at, alias=data.get("alias") or None,
                password=data.get("password") or None,
            )])[0]
        except ValidationError as exc:
            raise ValidationError({"expires_at": exc.messages}) from None
        if isinstance(outcome, services.LinkCreated):
            self.created = outcome.link
            return data
        if isinstance(outcome, tinyurls.AliasRefused):
            raise ValidationError({"alias": outcome.message})
        if isinstance(outcome, passwords.PasswordRefused):
            raise ValidationError({"password": outcome.message})
        if isinstance(outcome, validation.LongurlRefused):
            raise ValidationError({"longurl": outcome.message})
        if isinstance(outcome, (services.LinkDisabled, services.LinkExpired)):
            state = "taken down" if isinstance(outcome, services.LinkDisabled) else "expired"
            raise ValidationError(f"link {outcome.link.tinyurl} already exists for this, and is "
                                  f"{state}: change it on its page")
        if isinstance(outcome, publishing.LinkPublishError):
            raise ValidationError("the link is stored but Kafka did not acknowledge it: the "
                                  "outbox sends it to the replicas when Kafka is back; find it "
                                  "in the list")
        raise outcome
