"""The YAML config: defaults, the documented example, and every kind of mistake."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from tcplife_exporter.config import ConfigError, ExporterConfig, load_config, parse_config
from tcplife_exporter.exporter import same_series
from tcplife_exporter.native import NativeSettings

from .helpers.exporting import EXPORTER
from .helpers.tracing import REPO


def test_the_example_documents_exactly_the_defaults():
    assert load_config(str(REPO / "config.example.yaml")) == ExporterConfig()


def test_an_empty_file_means_the_defaults():
    assert parse_config("", "empty.yaml") == ExporterConfig()
    assert parse_config("ports:\n", "empty-section.yaml") == ExporterConfig()


def test_every_setting_is_read():
    config = parse_config("""
buckets: {duration_seconds: [0.5, 2], bytes: [10, 20]}
ports: {labelled: [22, 443], auto: false, auto_limit: 5}
labels:
  comm: true
  cgroup: true
  cgroup_depth: 2
  cgroup_rewrite: [{match: '/(a)/.*', replace: '\\1'}]
remote_networks:
  office: [192.0.2.0/24, "2001:db8::/32"]
filters: {family: ipv6, local_ports: [80], remote_ports: [5432], pid: 42}
limits: {max_label_sets: 7, max_open_sessions: 100}
histograms: both
native: {schema: -2, max_buckets: 40}
""", "full.yaml")
    assert config.duration_bounds == (0.5, 2)
    assert config.bytes_bounds == (10, 20)
    assert config.labelled_ports == {22, 443}
    assert (config.auto_ports, config.auto_port_limit, config.comm_label) == (False, 5, True)
    assert (config.cgroup_label, config.cgroup_depth) == (True, 2)
    (rewrite,) = config.cgroup_rewrites
    assert (rewrite.pattern.pattern, rewrite.replace) == ("/(a)/.*", "\\1")
    assert config.remote_networks == (
        ("office", (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32"))),
    )
    assert config.filter.family == 6 and config.filter.pid == 42
    assert config.filter.local_ports == {80} and config.filter.remote_ports == {5432}
    assert (config.max_label_sets, config.max_open_sessions) == (7, 100)
    assert config.histograms == "both" and config.classic
    assert config.native_settings() == NativeSettings(schema=-2, max_buckets=40)


@pytest.mark.parametrize("kind, classic, native", [
    ("classic", True, False), ("native", False, True), ("both", True, True)])
def test_histograms_choose_classic_native_or_both(kind, classic, native):
    config = parse_config(f"histograms: {kind}\nnative: {{schema: 5}}\n", "h.yaml")
    assert config.classic is classic
    assert config.native_settings() == (NativeSettings(schema=5) if native else None)


BAD = [
    ("ports: [", "bad.yaml:1: not valid YAML"),
    ("- 1\n", "bad.yaml:1: (top level): must be a mapping, got a list"),
    ("bukets: {}\n", "bad.yaml:1: bukets: unknown key; did you mean 'buckets'?"),
    ("ports:\n  autolimit: 3\n", "ports.autolimit: unknown key; did you mean 'auto_limit'?"),
    ("ports: {auto: yes please}\n", "ports.auto: must be true or false"),
    ("ports:\n  labelled: [80, 70000]\n", "bad.yaml:2: ports.labelled[1]: must be an integer "
                                          "from 1 to 65535, got 70000"),
    ("ports: {labelled: 80}\n", "ports.labelled: must be a list"),
    ("buckets: {bytes: [100, 100]}\n", "buckets.bytes[1]: bounds must increase strictly"),
    ("buckets: {bytes: [-1, 100]}\n", "buckets.bytes[0]: must be an integer from 0"),
    ("buckets: {duration_seconds: [-1]}\n", "must be a positive number of seconds, got -1"),
    ("buckets: {duration_seconds: []}\n", "needs at least one bucket bound"),
    ("buckets: {duration_seconds: [" + ", ".join(str(i) for i in range(1, 34)) + "]}\n",
     "has 33 items; at most 32"),
    ("remote_networks: {office: [10.0.0.0/33]}\n",
     "remote_networks.office[0]: '10.0.0.0/33' is not a valid CIDR"),
    ("remote_networks: {office: [10.0.0.1/8]}\n", "has host bits set"),
    ("remote_networks:\n  a: [10.0.0.0/8]\n  a: [10.1.0.0/16]\n",
     "bad.yaml:3: remote_networks.a: appears twice"),
    ("remote_networks:\n  a: [10.0.0.0/8]\n  b: [10.0.0.0/8]\n",
     "10.0.0.0/8 is already in network 'a'"),
    ("remote_networks: {other: [10.0.0.0/8]}\n", "the name 'other' is reserved"),
    ("filters: {family: ipv5}\n", "filters.family: must be one of any, ipv4, ipv6"),
    ("limits: {max_label_sets: 0}\n", "limits.max_label_sets: must be an integer from 1"),
    ("histograms: sparse\n", "histograms: must be one of classic, native, both, not 'sparse'"),
    ("native: {schema: 9}\n", "native.schema: must be an integer from -4 to 8, got 9"),
    ("native: {max_buckets: 1025}\n", "native.max_buckets: must be an integer from 1 to 1024"),
    ("native: {zero_threshold: 1}\n", "native.zero_threshold: unknown key"),
    ("labels: {comm: 1}\n", "labels.comm: must be true or false, got 1"),
    ("labels: {cgroup_depth: 65}\n", "labels.cgroup_depth: must be an integer from 0 to 64"),
    ("labels: {cgroup_rewrite: [{match: '(x'}]}\n", "labels.cgroup_rewrite[0]: needs 'replace'"),
    ("labels: {cgroup_rewrite: [{match: '(x', replace: y}]}\n",
     "labels.cgroup_rewrite[0].match: is not a regular expression: missing )"),
    ("labels: {cgroup_rewrite: [{match: '/(a)', replace: '\\2'}]}\n",
     "labels.cgroup_rewrite[0].replace: refers to group 2, but the expression has 1"),
    ("labels: {cgroup_rewrite: [{match: '/(?P<u>a)', replace: '\\g<v>'}]}\n",
     "refers to group 'v', which the expression does not name"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m for _t, m in BAD])
def test_mistakes_are_named(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "bad.yaml")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_unreadable_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read the config file"):
        load_config(str(tmp_path / "missing.yaml"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(binary))


@pytest.mark.bpf
@pytest.mark.parametrize(("text", "message"), BAD[:4] + BAD[12:14])
def test_the_exporter_refuses_a_bad_config_in_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    done = subprocess.run([*EXPORTER, "--config.file", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tcplife-exporter: ") and message in lines[0]


def test_a_reload_that_changes_how_cgroups_render_restarts_the_counters():
    base = parse_config("labels: {cgroup: true, cgroup_rewrite: [{match: '/a', replace: b}]}\n",
                        "old.yaml")
    same = parse_config("labels:\n  cgroup: true\n  cgroup_rewrite:\n"
                        "    - {match: '/a', replace: b}\n", "new.yaml")
    assert same_series(same, base)
    for changed in ("labels: {cgroup: false}\n",
                    "labels: {cgroup: true, cgroup_depth: 1, "
                    "cgroup_rewrite: [{match: '/a', replace: b}]}\n",
                    "labels: {cgroup: true, cgroup_rewrite: [{match: '/a', replace: c}]}\n"):
        assert not same_series(parse_config(changed, "new.yaml"), base), changed
