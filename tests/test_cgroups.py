"""Each session's cgroup v2, read from the socket: exact on both ends, whoever
closes, whatever the owner did since; tcplife's filter by cgroup; and the
exporter's cgroup label, rewritten by its rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tcplife_exporter.cgroup import cgroup_directory, hierarchy_root
from tcplife_exporter.cgroup_paths import unresolved

from .helpers.cgroups import own_cgroup
from .helpers.exporting import ExporterProcess, select, total
from .helpers.peers import Plan, reported, run_session
from .helpers.prometheus_server import PrometheusServer
from .helpers.tracing import TcplifeProcess
from .helpers.traffic import free_port

pytestmark = pytest.mark.bpf

DURATION = "tcplife_session_duration_seconds"


def shown(directory: Path) -> str:
    """A cgroup as tcplife shows it: its path below the hierarchy's root."""
    return "/" + str(directory.relative_to(hierarchy_root()))


def test_each_end_carries_its_own_cgroup(tcplife, cgroups):
    client_group, server_group = cgroups("clients"), cgroups("servers/web")
    result = run_session(Plan(client_sends=10, server_sends=20,
                              client_cgroup=str(client_group), server_cgroup=str(server_group)))
    client, server = reported(tcplife, result)
    assert client["cgroup"] == shown(client_group), client
    assert server["cgroup"] == shown(server_group), server


def test_a_server_reset_by_its_peer_has_no_owner_but_its_cgroup(tcplife, cgroups):
    client_group, server_group = cgroups("clients"), cgroups("servers")
    result = run_session(Plan(client_sends=10, closer="client", abort=True,
                              client_cgroup=str(client_group), server_cgroup=str(server_group)))
    client, server = reported(tcplife, result)
    assert client["cgroup"] == shown(client_group)
    # The reset is processed in the client's context: the server's owner may be
    # unknown, its socket's cgroup never is.
    assert server["cgroup"] == shown(server_group), server


def test_the_cgroup_is_the_one_the_socket_was_created_in(tcplife, cgroups):
    """A client socket stays in the cgroup of socket(), an accepted one in its
    listener's, wherever their processes move before connect() and accept()."""
    first, second = cgroups("first"), cgroups("second")
    result = run_session(Plan(client_sends=3, server_sends=4,
                              client_cgroup=str(first), client_moves_to=str(second),
                              server_cgroup=str(second), server_moves_to=str(first)))
    client, server = reported(tcplife, result)
    assert client["cgroup"] == shown(first), client
    assert server["cgroup"] == shown(second), server


def test_a_cgroup_removed_before_the_close_shows_its_id(cgroups):
    parked = cgroups("parked")
    with TcplifeProcess(["--json"]) as proc:
        doomed = cgroups("doomed")
        doomed_id = os.stat(doomed).st_ino
        # The client's socket is created in the doomed cgroup, then the client
        # leaves it; the cgroup is removed while the session is open.
        result = run_session(Plan(client_sends=5, server_sends=6, pause=True,
                                  client_cgroup=str(doomed), client_moves_to=str(parked)),
                             between=doomed.rmdir)
        client, server = reported(proc, result)
    assert not doomed.exists()
    assert client["cgroup"] == unresolved(doomed_id) == f"(unknown:{doomed_id})", client
    assert server["cgroup"] == own_cgroup(), server  # the peers' forkserver is ours


def test_the_cgroup_column(cgroups):
    group = cgroups("column")
    with TcplifeProcess(["--cgroup"]) as proc:
        result = run_session(Plan(client_sends=1, client_cgroup=str(group)))
        client = [str(result.client.pid), "tl-client", "127.0.0.1", str(result.client.lport)]

        def client_line() -> list[str]:
            return [line.split() for line in proc.lines[1:] if line.split()[:4] == client]

        proc.wait_for(lambda _: bool(client_line()))
        assert proc.lines[0].split()[-2:] == ["MS", "CGROUP"]
        (fields,) = client_line()
    assert fields[-1] == shown(group), fields


def test_the_cgroup_filter_keeps_a_cgroup_and_those_below_it(cgroups):
    kept, below, other = cgroups("kept"), cgroups("kept/below"), cgroups("other")
    with TcplifeProcess(["--json", "--cgroup-filter", shown(kept)]) as proc:
        inside = run_session(Plan(client_sends=1, client_cgroup=str(below),
                                  server_cgroup=str(other)))
        outside = run_session(Plan(client_sends=2, client_cgroup=str(other),
                                   server_cgroup=str(other)))
        (client,) = proc.matching(inside.client.lport, inside.client.rport)
        assert client["cgroup"] == shown(below)
        # Both ends of `outside` and the server end of `inside` closed before the
        # client end above was read: had they been traced, they would be here.
        assert not proc.matching(inside.server.lport, inside.server.rport, timeout=0)
        assert not proc.matching(outside.client.lport, outside.client.rport, timeout=0)
        assert not proc.matching(outside.server.lport, outside.server.rport, timeout=0)
    # The filter also takes the cgroup's directory.
    with TcplifeProcess(["--json", "--cgroup-filter", str(kept)]) as proc:
        inside = run_session(Plan(client_sends=1, client_cgroup=str(kept)))
        (client,) = proc.matching(inside.client.lport, inside.client.rport)
        assert client["cgroup"] == shown(kept)


def test_the_filter_names_a_cgroup_as_shown_or_by_directory_or_mount_point():
    """As --cgroup PATH did before it: a hybrid layout's mount point (cgroup v1
    controllers beside) stands for its unified/ directory."""
    root = hierarchy_root()
    mount = os.path.dirname(root) if os.path.basename(root) == "unified" else root
    assert cgroup_directory(mount) == cgroup_directory(root) == cgroup_directory("/") == root


def test_an_unknown_cgroup_filter_is_one_line():
    with pytest.raises(AssertionError) as failed:
        TcplifeProcess(["--cgroup-filter", "/no/such/cgroup"]).__enter__()
    message = str(failed.value)
    assert "no cgroup v2 /no/such/cgroup: neither a cgroup v2 directory nor a cgroup below " \
           f"the hierarchy's root {hierarchy_root()}" in message, message
    assert "Traceback" not in message


def test_the_exporter_labels_each_end_with_its_cgroup_as_the_rules_say(tmp_path, cgroups):
    server_group, client_group = cgroups("services/web.service/worker"), cgroups("clients/a")
    parked = cgroups("parked")
    top = shown(server_group).split("/")[1]
    port = free_port()
    config = f"""ports: {{labelled: [{port}], auto: false}}
labels:
  cgroup: true
  cgroup_depth: 2
  cgroup_rewrite:
    - match: '/{top}/services/(?P<unit>[^/]+)(?:/.*)?'
      replace: 'unit \\g<unit>'
"""
    with ExporterProcess(config, workdir=tmp_path) as exporter:
        for _ in range(3):
            run_session(Plan(client_sends=10, port=port, client_cgroup=str(client_group),
                             server_cgroup=str(server_group)))
        # A cgroup created after the exporter started and removed before the close.
        doomed = cgroups("doomed")
        run_session(Plan(client_sends=10, port=port, pause=True, client_cgroup=str(doomed),
                         client_moves_to=str(parked), server_cgroup=str(server_group)),
                    between=doomed.rmdir)
        count = f"{DURATION}_count"
        samples = exporter.wait_until(
            lambda s: total(s, count, port=str(port), direction="inbound") == 4
            and total(s, count, port=str(port), direction="outbound") == 4)
    ours = {dict(labels)["cgroup"]: found for labels, found in
            select(samples, count, port=str(port)).items()}
    assert ours == {"unit web.service": 4, f"/{top}/clients": 3, "unknown": 1}, ours
    # Open sessions carry no cgroup label (a table slot has no room for it).
    assert all("cgroup" not in dict(labels) for labels in select(samples, "tcplife_sessions_open"))


def test_prometheus_sees_the_cgroup_label(tmp_path, cgroups):
    group = cgroups("prometheus/app.service")
    port = free_port()
    config = f"ports: {{labelled: [{port}], auto: false}}\nlabels: {{cgroup: true}}\n"
    with ExporterProcess(config, workdir=tmp_path) as exporter, \
            PrometheusServer(tmp_path, [f"127.0.0.1:{exporter.port}"]) as prometheus:
        for _ in range(5):
            run_session(Plan(client_sends=1, port=port, server_cgroup=str(group)))
        inbound = (f'sum by (cgroup) (tcplife_session_duration_seconds_count'
                   f'{{port="{port}", direction="inbound"}}) == 5')
        (result,) = prometheus.wait_for(inbound)
    assert result["metric"] == {"cgroup": shown(group)}, result
