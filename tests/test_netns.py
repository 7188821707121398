"""Sessions between two hosts (network namespaces joined by veth), not loopback."""

from __future__ import annotations

import pytest

from .helpers.netns import VethPair
from .helpers.peers import CLOSES, Plan, assert_exact, assert_owned, run_session

pytestmark = pytest.mark.bpf


@pytest.fixture(scope="module")
def hosts():
    with VethPair() as pair:
        yield pair


def plan_between(hosts: VethPair, family: int, **kwargs) -> Plan:
    server = hosts.b.ipv4 if family == 4 else hosts.b.ipv6
    return Plan(family=family, server_addr=server, client_netns=hosts.a.netns,
                server_netns=hosts.b.netns, **kwargs)


@pytest.mark.parametrize(("closer", "abort"), CLOSES)
@pytest.mark.parametrize("family", [4, 6])
def test_exact_bytes_across_veth(tcplife, hosts, family, closer, abort):
    plan = plan_between(hosts, family, client_sends=3001, server_sends=70001,
                        closer=closer, abort=abort)
    result = run_session(plan)
    client, server = assert_exact(tcplife, result)
    assert_owned(client, result.client)
    client_ip = hosts.a.ipv4 if family == 4 else hosts.a.ipv6
    server_ip = hosts.b.ipv4 if family == 4 else hosts.b.ipv6
    assert (client["laddr"], client["raddr"]) == (client_ip, server_ip)
    assert (server["laddr"], server["raddr"]) == (server_ip, client_ip)


def test_ten_megabytes_across_veth(tcplife, hosts):
    size = 10 * 1024 * 1024 + 3
    assert_exact(tcplife, run_session(plan_between(hosts, 4, client_sends=size,
                                                   server_sends=size // 2)))
