"""Changes the admin can make that no replica could apply used to be reported as made: an
expiry at or before the Unix epoch (published as a record every replica refused, sent again for
ever) and a change of a link at the largest state version (a forged record put it there)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from django.core.exceptions import ValidationError

from links import services
from links.models import Link
from testkit import wait_until
from tests.links.test_audit import newest
from topics.links import VERSION_MAX, link_record_encode


@pytest.mark.parametrize("when", [datetime(1, 1, 1, tzinfo=timezone.utc),
                                  datetime(1970, 1, 1, tzinfo=timezone.utc)])
def test_an_expiry_at_or_before_the_epoch_reaches_replicas_as_gone(transactional_db,
                                                                   replica_factory, when):
    replica = replica_factory()
    link = services.link_create(longurl=f"https://example.com/epoch/{when.year}").link
    wait_until(lambda: replica.get(link.tinyurl).status_code == 302, timeout=30,
               what="the link served")
    services.link_update(link=link, expires_at=when)
    record = newest(link.tinyurl)  # decoded by the replicas' own type: it passes
    assert record.version == 2 and record.expires_at == 1
    assert Link.objects.get(pk=link.pk).published_at is not None
    # Long past its keep time too: the replica drops the link (404), never redirects.
    wait_until(lambda: replica.get(link.tinyurl).status_code in (404, 410), timeout=30,
               what="the link ended on the replica")


def test_the_encoder_refuses_a_version_no_replica_would_apply():
    now = datetime.now(timezone.utc)
    with pytest.raises(ValueError):
        link_record_encode(tinyurl="abcDEF1", version=VERSION_MAX + 1,
                           longurl="https://example.com/", created_at=now)


def test_a_change_at_the_largest_version_is_refused_not_reported(transactional_db):
    link = services.link_create(longurl="https://example.com/largest-version").link
    Link.objects.filter(pk=link.pk).update(state_version=VERSION_MAX)
    with pytest.raises(ValidationError, match="largest state version"):
        services.link_update(link=link, disabled=True)
    row = Link.objects.get(pk=link.pk)
    assert (row.state_version, row.disabled_at) == (VERSION_MAX, None)
