"""The netns cluster's own network (testkit/netns.py): each run claims a /24 no other
holds, so two suites at once on one machine do not share addresses. Only the bridges are made
here (no namespace, no service). Root only, as the scenarios."""

from __future__ import annotations

import os

import pytest

from testkit import netns
from testkit.netns import NetnsCluster

# Out of the fast lane, as every netns test (tests/stack/test_lanes.py): they change the
# machine's network.
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="network interfaces need root"),
              pytest.mark.services]


def addresses_of(device: str) -> list:
    return [net for dev, net in netns.networks_in_use() if dev == device]


def test_two_clusters_claim_two_networks_even_when_drawing_the_same(test_data_dir,
                                                                     monkeypatch):
    first = NetnsCluster(test_data_dir, "first")
    second = NetnsCluster(test_data_dir, "second")
    try:
        taken = first.subnet_claim()
        assert taken in netns.SUBNETS and addresses_of(first.bridge) == [taken]
        assert taken not in netns.subnets_free()
        # The other run drew the same /24 at the same moment: it sees the first's bridge once
        # its own holds the address, lets go and draws again.
        free, draws = netns.subnets_free, []

        def drawn_first_the_same() -> list:
            draws.append(taken)
            return [taken] if len(draws) == 1 else free()

        monkeypatch.setattr(netns, "subnets_free", drawn_first_the_same)
        other = second.subnet_claim()
        assert len(draws) == 2 and other != taken and addresses_of(second.bridge) == [other]
        assert addresses_of(first.bridge) == [taken]
    finally:
        for cluster in (first, second):
            netns.sh("ip", "link", "del", cluster.bridge, check=False)
    assert not addresses_of(first.bridge) and not addresses_of(second.bridge)


def test_a_network_in_use_is_never_drawn(monkeypatch):
    # An address or route of this machine inside 10.231-10.250 (a wider one too) takes every
    # /24 it overlaps.
    import ipaddress

    monkeypatch.setattr(netns, "networks_in_use", lambda besides=None: [
        ("eth9", ipaddress.ip_network("10.231.0.0/16")),
        ("tun0", ipaddress.ip_network("10.240.7.0/24"))])
    free = netns.subnets_free()
    assert len(free) == len(netns.SUBNETS) - 256 - 1
    assert not any(str(net).startswith("10.231.") for net in free)
    assert ipaddress.ip_network("10.240.7.0/24") not in free
