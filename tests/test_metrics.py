"""The metric families built from folded series and open-session labels."""

from __future__ import annotations

import ipaddress
from collections import Counter

from tcplife_exporter.config import ExporterConfig, parse_config
from tcplife_exporter.folding import LabelRules, Series
from tcplife_exporter.metrics import session_families
from tcplife_exporter.native import HISTOGRAMS, NativeBuckets, NativeSettings, window
from tcplife_exporter.session_table import OpenLabels

from .helpers.tracing import REPO

LAN = (("lan", (ipaddress.ip_network("10.0.0.0/8"),)),)
CONFIG = ExporterConfig(duration_bounds=(0.1, 1.0), bytes_bounds=(0, 100),
                        labelled_ports=frozenset({443}), remote_networks=LAN)
RULES = LabelRules(listed_ports=frozenset({443}), auto_ports=True, auto_port_limit=64,
                   ephemeral_ports=(32768, 60999), networks=LAN)
LOADED_NS = 5_000_000_000


def series(**values) -> Series:
    defaults = dict(direction="inbound", family=4, port=443, network=1, comm=b"",
                    cgroup=None, overflow=False, failed_handshakes=0, duration_sum_ns=0, sent_sum=0,
                    received_sum=0, created_ns=0, duration=[0, 0, 0], sent=[0, 0, 0],
                    received=[0, 0, 0], native=None)
    return Series(**{**defaults, **values})


def samples(families) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in families for s in family.samples}


def labels(**values: str) -> tuple:
    return tuple(sorted(values.items()))


def test_buckets_are_cumulative_and_sums_in_base_units():
    one = series(duration=[1, 2, 1], duration_sum_ns=2_600_000_000, sent=[1, 0, 3],
                 sent_sum=1500, received=[4, 0, 0], failed_handshakes=2,
                 created_ns=LOADED_NS + 1)
    found = samples(session_families(CONFIG, RULES, [one], Counter(), {}, LOADED_NS))
    base = dict(direction="inbound", port="443", family="ipv4", remote_network="lan")
    duration = "tcplife_session_duration_seconds"
    assert [found[(f"{duration}_bucket", labels(**base, le=le))]
            for le in ("0.1", "1.0", "+Inf")] == [1, 3, 4]
    assert found[(f"{duration}_count", labels(**base))] == 4
    assert found[(f"{duration}_sum", labels(**base))] == 2.6
    assert found[("tcplife_session_sent_bytes_bucket", labels(**base, le="0.0"))] == 1
    assert found[("tcplife_session_sent_bytes_sum", labels(**base))] == 1500
    assert found[("tcplife_handshake_failures_total", labels(**base))] == 2
    assert (f"{duration}_created", labels(**base)) in found


def test_listed_ports_are_at_zero_before_any_session():
    found = samples(session_families(CONFIG, RULES, [], Counter(), {}, LOADED_NS))
    counts = {lab for (name, lab), _ in found.items()
              if name == "tcplife_session_duration_seconds_count"}
    assert counts == {labels(direction=d, port="443", family=f, remote_network=n)
                      for d in ("inbound", "outbound") for f in ("ipv4", "ipv6")
                      for n in ("lan", "other")}
    assert all(v == 0 for (name, _), v in found.items()
               if name.endswith(("_count", "_sum", "_bucket", "_total")))


def test_process_names_that_render_the_same_are_one_label_set():
    config = ExporterConfig(duration_bounds=(0.1, 1.0), bytes_bounds=(0, 100),
                            comm_label=True)
    rules = LabelRules(frozenset(), True, 64, (32768, 60999), ())
    two = [series(comm=b"a\xff", network=0, duration=[1, 0, 0]),
           series(comm=b"a\\xff", network=0, duration=[0, 1, 0])]
    found = samples(session_families(config, rules, two, Counter(), {}, LOADED_NS))
    base = labels(direction="inbound", port="443", family="ipv4", comm="a\\xff")
    assert found[("tcplife_session_duration_seconds_count", base)] == 2


def test_overflow_shows_only_once_used():
    unused = series(overflow=True, port=0, network=0)
    used = series(overflow=True, port=0, network=0, direction="outbound", duration=[0, 0, 1])
    found = samples(session_families(CONFIG, RULES, [unused, used], Counter(), {}, LOADED_NS))
    overflow = {lab for (name, lab), _ in found.items()
                if name == "tcplife_session_duration_seconds_count" and ("port", "overflow") in lab}
    assert overflow == {labels(direction="outbound", port="overflow", family="ipv4",
                               remote_network="overflow")}


def test_open_sessions_render_with_the_names_of_the_rules_that_labelled_them():
    open_sessions = Counter({OpenLabels("inbound", 4, 443, 1, rules=2): 3,
                             OpenLabels("outbound", 6, 0, 1, rules=1): 1,
                             OpenLabels("outbound", 6, 0, 0, rules=2): 2})
    names = {1: ("old-net",), 2: ("lan",)}
    found = samples(session_families(CONFIG, RULES, [], open_sessions, names, LOADED_NS))
    gauge = {lab: v for (name, lab), v in found.items() if name == "tcplife_sessions_open"}
    assert gauge[labels(direction="inbound", port="443", family="ipv4",
                        remote_network="lan")] == 3
    assert gauge[labels(direction="outbound", port="other", family="ipv6",
                        remote_network="old-net")] == 1
    assert gauge[labels(direction="outbound", port="other", family="ipv6",
                        remote_network="other")] == 2
    # Every label set known in advance has its gauge too, at zero.
    assert gauge[labels(direction="outbound", port="443", family="ipv6",
                        remote_network="lan")] == 0


def readme_recipe() -> str:
    """The README's Kubernetes recipe for the cgroup label, as documented."""
    readme = (REPO / "README.md").read_text()
    after = readme.split("one value per pod and per systemd unit:", 1)[1]
    return after.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_cgroups_rewritten_alike_merge_and_unknown_ones_are_named():
    config = parse_config(readme_recipe(), "README.md")
    # The systemd cgroup driver's layouts: a burstable pod, and a guaranteed one
    # (no QoS slice), each with containers.
    pod = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podab_12.slice"
    guaranteed = "/kubepods.slice/kubepods-podcd_34.slice"
    folded = [series(cgroup=f"{pod}/cri-containerd-1.scope", duration=[1, 0, 0]),
              series(cgroup=f"{pod}/cri-containerd-2.scope", duration=[0, 1, 0]),
              series(cgroup=f"{guaranteed}/cri-containerd-3.scope", duration=[0, 1, 0]),
              series(cgroup="/system.slice/nginx.service", duration=[0, 0, 1]),
              series(cgroup="/user.slice/user-1000.slice/session-3.scope", duration=[1, 0, 0]),
              series(cgroup="/", duration=[1, 0, 0]),
              series(cgroup=None, duration=[1, 0, 0]),
              series(overflow=True, duration=[1, 0, 0])]
    found = samples(session_families(config, RULES, folded, Counter(), {}, LOADED_NS))
    count = "tcplife_session_duration_seconds_count"

    def counted(cgroup: str, port: str = "443") -> float:
        return found[(count, labels(cgroup=cgroup, direction="inbound", family="ipv4",
                                    port=port, remote_network="lan"))]

    assert counted("pod ab_12") == 2  # two containers of one pod: one label set
    assert counted("pod cd_34") == 1
    assert counted("nginx.service") == 1  # a systemd unit by its name
    assert counted("/user.slice") == 1  # no rule matched: cut to depth 1
    assert counted("/") == 1
    assert counted("unknown") == 1
    assert found[(count, labels(cgroup="overflow", direction="inbound", family="ipv4",
                                port="overflow", remote_network="overflow"))] == 1


def test_native_buckets_of_label_sets_that_render_the_same_are_added():
    """Two kernel label sets with one rendering (process names) give one native
    histogram, bucket by bucket; listed ports are native at zero in advance."""
    settings = NativeSettings(schema=3, max_buckets=4)
    config = ExporterConfig(duration_bounds=(0.1, 1.0), bytes_bounds=(0, 100),
                            comm_label=True, histograms="both", native=settings)
    rules = LabelRules(frozenset(), True, 64, (32768, 60999), ())

    def native(zero: int, counts: list[int]) -> dict[str, NativeBuckets]:
        return {h: NativeBuckets(window(h, settings), zero, list(counts)) for h in HISTOGRAMS}

    two = [series(comm=b"a\xff", network=0, duration=[1, 0, 0], native=native(1, [0, 2, 0, 0])),
           series(comm=b"a\\xff", network=0, duration=[0, 1, 0], native=native(0, [1, 1, 0, 0]))]
    families = session_families(config, rules, two, Counter(), {}, LOADED_NS)
    sent = next(f for f in families if f.name == "tcplife_session_sent_bytes")
    (key,) = sent.native
    assert key == ("inbound", "443", "ipv4", "a\\xff")
    assert (sent.native[key].zero_count, sent.native[key].counts) == (1, [1, 3, 0, 0])
    assert two[0].native["sent"].counts == [0, 2, 0, 0]  # the kernel's values untouched

    listed = ExporterConfig(labelled_ports=frozenset({443}), histograms="native",
                            native=settings)
    families = session_families(listed, RULES, [], Counter(), {}, LOADED_NS)
    duration = next(f for f in families if f.name == "tcplife_session_duration_seconds")
    assert len(duration.native) == 8 and not duration.classic
    assert all(b.counts == [0] * 4 and b.zero_count == 0 for b in duration.native.values())
