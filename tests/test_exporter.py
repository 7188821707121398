"""The exporter's folded metrics against real sessions with known sizes and hold times."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from tcplife_exporter.folding import ephemeral_port_range
from tcplife_exporter.session_table import slots_for

from .helpers.exporting import ExporterProcess, select, total, value
from .helpers.traffic import Load, free_port, refused_connects, run_load

pytestmark = pytest.mark.bpf

DURATION = "tcplife_session_duration_seconds"
SENT = "tcplife_session_sent_bytes"
RECEIVED = "tcplife_session_received_bytes"


def both_closed(port: int, count: int):
    """A scrape predicate: `count` sessions on `port` folded for each direction."""
    def done(samples) -> bool:
        return all(value(samples, f"{DURATION}_count", direction=d, port=str(port),
                         family="ipv4") == count for d in ("inbound", "outbound"))
    return done


def buckets(samples, name: str, **labels: str) -> dict[str, float]:
    return {dict(lab)["le"]: v for lab, v in select(samples, f"{name}_bucket", **labels).items()}


# Scrapes are TCP sessions too: tests that count every session keep to IPv6
# and filter on it, while the exporter is scraped over IPv4. They expect no
# other IPv6 TCP traffic on the host while they run.
IPV6_ONLY = "filters: {family: ipv6}\n"
V6 = "::1"


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_port(socket.AF_INET6), free_port(socket.AF_INET6)


def test_counts_sums_and_buckets_are_exact(tmp_path, ports):
    quick, slow = ports
    config = f"""
buckets:
  duration_seconds: [0.005, 0.1, 10]
  bytes: [0, 100, 1024, 4096]
ports: {{labelled: [{quick}, {slow}], auto: false}}
"""
    with ExporterProcess(config, workdir=tmp_path) as exporter:
        # 1024 bytes sit exactly on a bound: `le` is inclusive.
        run_load(Load(port=quick, count=25, client_sends=1024, server_sends=1025))
        run_load(Load(port=slow, count=10, client_sends=100, server_sends=0, hold_s=0.02))
        samples = exporter.wait_until(
            lambda s: both_closed(quick, 25)(s) and both_closed(slow, 10)(s))

    for port, count, up, down in ((quick, 25, 1024, 1025), (slow, 10, 100, 0)):
        out = dict(direction="outbound", port=str(port), family="ipv4")
        into = dict(direction="inbound", port=str(port), family="ipv4")
        for labels in (out, into):
            assert value(samples, f"{DURATION}_count", **labels) == count
            assert value(samples, f"{SENT}_count", **labels) == count
            assert value(samples, f"{RECEIVED}_count", **labels) == count
        assert value(samples, f"{SENT}_sum", **out) == count * up
        assert value(samples, f"{RECEIVED}_sum", **out) == count * down
        assert value(samples, f"{SENT}_sum", **into) == count * down
        assert value(samples, f"{RECEIVED}_sum", **into) == count * up

    out = dict(direction="outbound", port=str(quick), family="ipv4")
    into = dict(direction="inbound", port=str(quick), family="ipv4")
    assert buckets(samples, SENT, **out) == {"0.0": 0, "100.0": 0, "1024.0": 25, "4096.0": 25,
                                             "+Inf": 25}
    assert buckets(samples, SENT, **into) == {"0.0": 0, "100.0": 0, "1024.0": 0, "4096.0": 25,
                                              "+Inf": 25}
    assert buckets(samples, RECEIVED, **into)["1024.0"] == 25
    slow_out = dict(direction="outbound", port=str(slow), family="ipv4")
    # 100 bytes on the bound; 0 bytes alone in le="0" (nothing sent), and in le="100" too.
    assert buckets(samples, SENT, **slow_out)["0.0"] == 0
    assert buckets(samples, SENT, **slow_out)["100.0"] == 10
    assert buckets(samples, RECEIVED, **slow_out)["0.0"] == 10
    assert buckets(samples, RECEIVED, **slow_out)["100.0"] == 10
    # Held 20 ms: above 5 ms, far below 100 ms.
    assert buckets(samples, DURATION, **slow_out) == {"0.005": 0, "0.1": 10, "10.0": 10,
                                                      "+Inf": 10}
    mean = value(samples, f"{DURATION}_sum", **slow_out) / 10
    assert 0.02 <= mean < 0.1
    # The cap was never reached: no overflow label sets are shown.
    assert not select(samples, f"{DURATION}_count", port="overflow")


def test_ipv6_sessions_get_their_family(tmp_path):
    port = free_port(socket.AF_INET6)
    config = f"ports: {{labelled: [{port}], auto: false}}\n"
    with ExporterProcess(config, workdir=tmp_path) as exporter:
        run_load(Load(port=port, count=3, client_sends=10, server_sends=20, server_addr="::1"))
        samples = exporter.wait_until(lambda s: total(s, f"{SENT}_sum", port=str(port)) == 90)
    for direction, sent in (("outbound", 30), ("inbound", 60)):
        labels = dict(direction=direction, port=str(port), family="ipv6")
        assert value(samples, f"{SENT}_count", **labels) == 3
        assert value(samples, f"{SENT}_sum", **labels) == sent


def test_unlisted_and_ephemeral_ports_fold_into_other(tmp_path, ports):
    """Counted on the server side only (a local-port filter), so that other
    traffic on the host cannot add to "other"."""
    listed, unlisted = ports
    low, high = ephemeral_port_range()
    ephemeral = next(p for p in range(high, low, -1) if _bindable(p))
    config = (f"ports: {{labelled: [{listed}], auto: false}}\n"
              f"filters: {{local_ports: [{listed}, {unlisted}]}}\n")
    with ExporterProcess(config, workdir=tmp_path) as exporter:
        run_load(Load(port=listed, count=2, server_addr=V6))
        run_load(Load(port=unlisted, count=3, server_addr=V6))
        samples = exporter.wait_until(
            lambda s: total(s, f"{DURATION}_count") == 5)
    assert total(samples, f"{DURATION}_count", port="other") == 3
    assert total(samples, f"{DURATION}_count", port=str(listed)) == 2
    assert not select(samples, f"{DURATION}_count", port=str(unlisted))

    config = f"ports: {{auto: true}}\nfilters: {{local_ports: [{ephemeral}, {listed}]}}\n"
    with ExporterProcess(config, workdir=tmp_path) as exporter:
        run_load(Load(port=ephemeral, count=2, server_addr=V6))
        run_load(Load(port=listed, count=1, server_addr=V6))
        samples = exporter.wait_until(lambda s: total(s, f"{DURATION}_count") == 3)
    assert total(samples, f"{DURATION}_count", port="other") == 2
    assert total(samples, f"{DURATION}_count", port=str(listed)) == 1
    port_labels = {dict(lab)["port"] for lab in select(samples, f"{DURATION}_count")}
    assert str(ephemeral) not in port_labels


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind((V6, port))
        except OSError:
            return False
    return True


def test_label_set_cap_folds_the_rest_into_overflow(tmp_path, ports):
    """Clients only (a remote-port filter), so that other traffic on the host
    cannot take label sets: four client names, room for two."""
    port = ports[0]
    config = f"""
ports: {{labelled: [{port}], auto: false}}
labels: {{comm: true}}
limits: {{max_label_sets: 2}}
filters: {{remote_ports: [{port}]}}
"""
    with ExporterProcess(config, workdir=tmp_path) as exporter:
        for name in (b"cap-a", b"cap-b", b"cap-c", b"cap-d"):
            run_load(Load(port=port, count=2, client_comm=name, server_comm=b"cap-srv",
                          server_addr=V6))
        samples = exporter.wait_until(
            lambda s: total(s, f"{DURATION}_count") == 8)
    assert total(samples, f"{DURATION}_count") == 8  # nothing lost
    overflow = total(samples, f"{DURATION}_count", port="overflow", comm="overflow")
    labelled = total(samples, f"{DURATION}_count") - overflow
    # The first two label sets: cap-a's and cap-b's.
    assert labelled == 4
    for name in ("cap-a", "cap-b"):
        assert value(samples, f"{DURATION}_count", direction="outbound", port=str(port),
                     family="ipv6", comm=name) == 2
    assert overflow == 4
    assert value(samples, f"{DURATION}_count", direction="outbound", port="overflow",
                 family="ipv6", comm="overflow") == 4
    assert value(samples, "tcplife_exporter_series_overflow_sessions_total") == 4
    assert value(samples, "tcplife_exporter_label_sets") == 2


def test_auto_port_limit_counts_what_it_folds(tmp_path):
    """Clients only (a remote-port filter): no other port can take the one label."""
    first, second, third = (free_port(socket.AF_INET6) for _ in range(3))
    config = (f"ports: {{auto: true, auto_limit: 1}}\n"
              f"filters: {{remote_ports: [{first}, {second}, {third}]}}\n")
    with ExporterProcess(config, workdir=tmp_path) as exporter:
        run_load(Load(port=first, count=2, server_addr=V6))
        run_load(Load(port=second, count=3, server_addr=V6))
        run_load(Load(port=third, count=1, server_addr=V6))
        samples = exporter.wait_until(lambda s: total(s, f"{DURATION}_count") == 6)
    # The first port seen takes the only label; the others fold into "other", also
    # the later sessions of a port already refused.
    counts = {dict(lab)["port"]: v for lab, v in select(samples, f"{DURATION}_count").items()
              if v}
    assert counts == {str(first): 2, "other": 4}
    assert value(samples, "tcplife_exporter_port_limit_sessions_total") == 4


def test_comm_label_survives_hostile_process_names(tmp_path, ports):
    port = ports[0]
    hostile = b'a"b\\c\nd}e\xff{'
    config = f"ports: {{labelled: [{port}], auto: false}}\nlabels: {{comm: true}}\n" + IPV6_ONLY
    with ExporterProcess(config, workdir=tmp_path) as exporter:
        run_load(Load(port=port, count=2, client_comm=hostile, server_comm=b"plain",
                      server_addr=V6))
        samples = exporter.wait_until(
            lambda s: total(s, f"{DURATION}_count", port=str(port)) == 4)
        text = exporter.scrape_text()
    comms = {dict(lab)["comm"] for lab in select(samples, f"{DURATION}_count", port=str(port))}
    assert comms == {'a"b\\c\nd}e\\xff{', "plain"}
    assert "\nd}" not in text  # the newline is escaped, not injected


def test_remote_network_label_takes_the_longest_prefix(tmp_path, ports):
    port = ports[0]
    config = f"""
ports: {{labelled: [{port}], auto: false}}
remote_networks:
  server-host: [127.0.0.2/32]
  loopback: [127.0.0.0/8, "::1/128"]
  unused: [192.0.2.0/24]
"""
    with ExporterProcess(config, workdir=tmp_path) as exporter:
        run_load(Load(port=port, count=3, server_addr="127.0.0.2", client_addr="127.0.0.3"))
        samples = exporter.wait_until(both_closed(port, 3))
    assert value(samples, f"{DURATION}_count", direction="outbound", port=str(port),
                 family="ipv4", remote_network="server-host") == 3
    assert value(samples, f"{DURATION}_count", direction="inbound", port=str(port),
                 family="ipv4", remote_network="loopback") == 3


def test_sessions_open_gauge_and_failed_handshakes(tmp_path, ports):
    port, closed_port = ports
    config = f"ports: {{labelled: [{port}, {closed_port}], auto: false}}\n"
    with ExporterProcess(config, workdir=tmp_path) as exporter:
        listener = socket.create_server(("127.0.0.1", port))
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        gauge = "tcplife_sessions_open"
        samples = exporter.wait_until(
            lambda s: total(s, gauge, port=str(port)) == 2)
        for direction in ("inbound", "outbound"):
            assert value(samples, gauge, direction=direction, port=str(port), family="ipv4") == 1
        client.close()
        server.close()
        listener.close()
        samples = exporter.wait_until(both_closed(port, 1))
        assert total(samples, gauge, port=str(port)) == 0

        refused_connects(closed_port, 3)
        samples = exporter.wait_until(
            lambda s: total(s, "tcplife_handshake_failures_total", port=str(closed_port)) == 3)
    assert value(samples, "tcplife_handshake_failures_total", direction="outbound",
                 port=str(closed_port), family="ipv4") == 3
    # A refused connection is not a session: no lifespan for it.
    assert total(samples, f"{DURATION}_count", port=str(closed_port)) == 0


def test_sessions_born_under_an_earlier_exporter_are_counted_not_folded(tmp_path, ports):
    """Sockets keep asking for callbacks after the exporter that saw their birth
    stops; the next one counts their closes without a lifespan."""
    port = ports[0]
    config = f"ports: {{labelled: [{port}], auto: false}}\n"
    listener = socket.create_server(("127.0.0.1", port))
    with ExporterProcess(config, workdir=tmp_path):
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
    with ExporterProcess(config, workdir=tmp_path) as exporter:
        client.close()
        server.close()
        listener.close()
        samples = exporter.wait_until(
            lambda s: value(s, "tcplife_exporter_sessions_birth_unseen_total") >= 2)
    assert value(samples, "tcplife_exporter_sessions_birth_unseen_total") >= 2
    assert total(samples, f"{DURATION}_count", port=str(port)) == 0


def test_self_metrics_are_present(tmp_path):
    with ExporterProcess(workdir=tmp_path) as exporter:
        samples = exporter.scrape()
    names = {name for name, _ in samples}
    for name in (
        "tcplife_exporter_build_info",
        "tcplife_exporter_sessions_birth_unseen_total",
        "tcplife_exporter_sessions_close_unseen_total",
        "tcplife_exporter_series_overflow_sessions_total",
        "tcplife_exporter_port_limit_sessions_total",
        "tcplife_exporter_ringbuf_drops_total",
        "tcplife_exporter_config_last_reload_successful",
        "tcplife_exporter_config_last_reload_success_timestamp_seconds",
        "tcplife_exporter_label_sets_limit",
        "process_resident_memory_bytes",
    ):
        assert name in names, name
    failures = select(samples, "tcplife_exporter_map_insert_failures_total")
    assert {dict(lab)["map"] for lab in failures} == {"sessions", "series"}


def test_no_records_are_emitted_when_nothing_consumes_them(tmp_path, ports):
    """The exporter keeps only a one-page ring buffer that nobody reads: were
    records emitted, it would fill after ~40 sessions and count drops."""
    two = [ports[0], free_port(socket.AF_INET6)]
    config = f"ports: {{labelled: [{two[0]}, {two[1]}], auto: false}}\n" + IPV6_ONLY

    def folded(s) -> float:
        return sum(total(s, f"{DURATION}_count", port=str(p)) for p in two)

    with ExporterProcess(config, workdir=tmp_path) as exporter:
        loads = [Load(port=p, count=500, server_addr=V6) for p in two]
        threads = [threading.Thread(target=run_load, args=(load,)) for load in loads]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        samples = exporter.wait_until(lambda s: folded(s) >= 2000)
    assert folded(samples) == 2000
    assert value(samples, "tcplife_exporter_ringbuf_drops_total") == 0


def test_a_full_session_table_is_counted_and_adds_up(tmp_path, ports):
    """With room for 2 open sessions (a table of 4 slots), 6 accepted sessions
    open at once: inserts fail for 2 of them, and every session is either
    folded or counted as unseen. The local-port filter keeps other traffic on
    the host out of the table."""
    port = ports[0]
    config = f"limits: {{max_open_sessions: 2}}\nfilters: {{local_ports: [{port}]}}\n"
    with ExporterProcess(config, workdir=tmp_path) as exporter:
        listener = socket.create_server((V6, port), family=socket.AF_INET6)
        clients = [socket.create_connection((V6, port)) for _ in range(6)]
        servers = [listener.accept()[0] for _ in clients]
        for sock in clients + servers:
            sock.close()
        listener.close()
        unseen = "tcplife_exporter_sessions_birth_unseen_total"
        samples = exporter.wait_until(
            lambda s: total(s, f"{DURATION}_count") + value(s, unseen) == 6)
    assert value(samples, "tcplife_exporter_map_insert_failures_total", map="sessions") == 2
    assert total(samples, f"{DURATION}_count") == 4
    assert value(samples, unseen) == 2


def test_open_sessions_on_a_port_not_yet_labelled(tmp_path, ports):
    """Automatic mode gives a port its label at its first session's birth: a
    long-lived first session shows under its own port while still open."""
    port = ports[0]
    with ExporterProcess("ports: {auto: true}\n" + IPV6_ONLY, workdir=tmp_path) as exporter:
        listener = socket.create_server((V6, port), family=socket.AF_INET6)
        client = socket.create_connection((V6, port))
        server, _ = listener.accept()
        samples = exporter.wait_until(
            lambda s: total(s, "tcplife_sessions_open", port=str(port)) == 2)
        for sock in (client, server, listener):
            sock.close()
    assert total(samples, "tcplife_sessions_open", port=str(port)) == 2
    assert total(samples, "tcplife_sessions_open", port="other") == 0


@pytest.fixture
def bpf_stats():
    """kernel.bpf_stats_enabled on for the test (it also widens the window in
    which a softirq can interrupt the program), restored after."""
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = path.read_text()
    path.write_text("1")
    yield
    path.write_text(before)


def test_concurrent_churns_are_folded_exactly(tmp_path, bpf_stats):
    """Eight loopback churns with a thread per end: closes arrive in softirqs
    on top of whatever the CPU runs, often inside another run of the program.
    Every session is folded: exact counts, nothing open left, nothing unseen."""
    loads = [Load(port=free_port(socket.AF_INET6), count=1000, server_addr=V6)
             for _ in range(8)]
    with ExporterProcess(IPV6_ONLY, workdir=tmp_path) as exporter:
        threads = [threading.Thread(target=run_load, args=(load,)) for load in loads]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ports = [str(load.port) for load in loads]

        def folded(s) -> float:
            return sum(total(s, f"{DURATION}_count", port=p) for p in ports)

        samples = exporter.wait_until(lambda s: folded(s) >= 16000)
    assert folded(samples) == 16000
    assert sum(total(samples, "tcplife_sessions_open", port=p) for p in ports) == 0
    assert value(samples, "tcplife_exporter_bpf_runs_total") > 0


def test_local_port_filter_never_tracks_the_other_outbound_sessions(tmp_path, ports):
    """With filters.local_ports, only the server side of these sessions is kept:
    connect() has picked the client's port before the birth, so the client side
    never takes a slot or counts as open."""
    port = ports[0]
    config = f"filters: {{local_ports: [{port}], family: ipv6}}\n"
    with ExporterProcess(config, workdir=tmp_path) as exporter:
        listener = socket.create_server((V6, port), family=socket.AF_INET6)
        client = socket.create_connection((V6, port))
        server, _ = listener.accept()
        gauge = "tcplife_sessions_open"
        samples = exporter.wait_until(lambda s: total(s, gauge, direction="inbound") == 1)
        assert total(samples, gauge, direction="inbound") == 1
        assert total(samples, gauge, direction="outbound") == 0
        for sock in (client, server, listener):
            sock.close()
        samples = exporter.wait_until(lambda s: total(s, f"{DURATION}_count") == 1)
    assert value(samples, f"{DURATION}_count", direction="inbound", port=str(port),
                 family="ipv6") == 1
    assert total(samples, f"{DURATION}_count", direction="outbound") == 0
    assert value(samples, "tcplife_exporter_sessions_birth_unseen_total") == 0


def test_the_session_table_holds_half_its_size_and_frees_its_slots(tmp_path, ports):
    """Room for 32 sessions: 16 open at once (the server ends of 16 connections;
    a local-port filter keeps other traffic out) are all tracked, twice in a
    row, so closed sessions give their slots back."""
    port = ports[0]
    config = f"limits: {{max_open_sessions: 32}}\nfilters: {{local_ports: [{port}]}}\n"
    with ExporterProcess(config, workdir=tmp_path) as exporter:
        listener = socket.create_server((V6, port), family=socket.AF_INET6, backlog=32)
        for round_ in (1, 2):
            clients = [socket.create_connection((V6, port)) for _ in range(16)]
            servers = [listener.accept()[0] for _ in clients]
            samples = exporter.wait_until(
                lambda s: total(s, "tcplife_sessions_open") == 16)
            assert total(samples, "tcplife_sessions_open") == 16
            for sock in clients + servers:
                sock.close()
            samples = exporter.wait_until(
                lambda s, n=16 * round_: total(s, f"{DURATION}_count") == n)
            assert total(samples, f"{DURATION}_count") == 16 * round_
            assert total(samples, "tcplife_sessions_open") == 0
        listener.close()
    assert value(samples, "tcplife_exporter_map_insert_failures_total", map="sessions") == 0
    assert value(samples, "tcplife_exporter_sessions_birth_unseen_total") == 0
    # A slot left taken would be found again when the kernel reuses the socket's address.
    assert value(samples, "tcplife_exporter_sessions_close_unseen_total") == 0


def test_session_table_slots_are_a_power_of_two_at_least_twice_the_sessions():
    for sessions in (1, 2, 3, 64, 65, 65536, 1_048_576):
        slots = slots_for(sessions)
        assert slots >= 2 * sessions and slots & (slots - 1) == 0
        assert slots < 4 * sessions
