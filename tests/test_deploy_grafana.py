"""The Grafana dashboards in deploy/grafana: well formed, and every query they make answers
with data from a real Prometheus server scraping the exporter during real traffic. Each
test runs for both: the classic one against classic histograms, the native one against
native histograms (the exporter with `histograms: native`, Prometheus with them on)."""

from __future__ import annotations

import json
import math
import re
import threading
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import pytest
from prometheus_client.utils import floatToGoString

from tcplife_exporter.config import DEFAULT_DURATION_BOUNDS

from .helpers.cgroups import own_cgroup
from .helpers.exporting import ExporterProcess
from .helpers.prometheus_server import PrometheusServer
from .helpers.tracing import REPO
from .helpers.traffic import Load, free_port, refused_connects, run_load

GRAFANA = REPO / "deploy" / "grafana"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
JOB = "tcplife-dashboard"
# What Grafana puts in place of its own variables. $__rate_interval is at least four
# scrape intervals of the data source (15 s unless configured): 1m with the default,
# and it must span two or more of the test server's 1 s scrapes for rate() to answer.
GLOBALS = {"__rate_interval": "1m", "__interval": "15s", "__interval_ms": "15000",
           "__range": "1h", "__range_s": "3600", "__range_ms": "3600000"}
# $name, ${name} or ${name:format}, and the deprecated [[name]].
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::[\w-]+)?\}|\[\[(\w+)(?::[\w-]+)?\]\]")
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$", re.DOTALL)
ALL = "$__all"

Selection = dict[str, Union[str, list[str]]]


@dataclass(frozen=True)
class Variant:
    """A dashboard, and the histograms it reads."""

    path: Path
    histograms: str  # the exporter's `histograms` setting
    features: tuple[str, ...]  # Prometheus's --enable-feature
    sessions: str  # PromQL: sessions closed so far, for a selector put in {}

    @property
    def native(self) -> bool:
        return self.histograms != "classic"


VARIANTS = [
    Variant(GRAFANA / "tcplife-exporter.json", "classic", (),
            "sum(tcplife_session_duration_seconds_count{{{}}})"),
    Variant(GRAFANA / "tcplife-exporter-native.json", "native", ("native-histograms",),
            "sum(histogram_count(tcplife_session_duration_seconds{{{}}}))"),
]
by_variant = pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.histograms)


def load_dashboard(variant: Variant) -> dict[str, Any]:
    return json.loads(variant.path.read_text())


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query."""
    return [(panel, target) for panel in all_panels(dashboard)
            for target in panel.get("targets", [])]


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in dashboard["templating"]["list"]}


def variable_query(var: dict[str, Any]) -> str:
    # Grafana 10 stores a query variable's query as an object; older ones as text.
    query = var["query"]
    return query["query"] if isinstance(query, dict) else query


def names_used(text: str) -> set[str]:
    return {next(g for g in match.groups() if g) for match in VARIABLE.finditer(text)}


def _regex_escape(value: str) -> str:
    # As Grafana's Prometheus data source does for multi-value and "All" variables:
    # escaped once for the regex and once more for the PromQL string around it.
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(), value)


def interpolate(text: str, template: dict[str, dict[str, Any]], chosen: Selection) -> str:
    """The text as Grafana sends it to Prometheus for these variable values."""
    def value(match: re.Match) -> str:
        name = next(g for g in match.groups() if g)
        if name in GLOBALS:
            return GLOBALS[name]
        var, picked = template[name], chosen[name]
        if picked == ALL:
            return var["allValue"]
        if not (var.get("multi") or var.get("includeAll")):
            assert isinstance(picked, str), (name, picked)
            return picked.replace("\\", "\\\\").replace("'", "\\\\'")
        escaped = [_regex_escape(one) for one in picked]
        return escaped[0] if len(escaped) == 1 else f"({'|'.join(escaped)})"
    return VARIABLE.sub(value, text)


# ---------------------------------------------------------------- structure


def test_the_dashboards_exist():
    # Each is its own dashboard for Grafana: importing one does not replace the other.
    uids = [load_dashboard(variant)["uid"] for variant in VARIANTS]
    assert len(set(uids)) == len(VARIANTS), uids


@by_variant
def test_dashboard_is_well_formed(variant):
    dashboard = load_dashboard(variant)
    assert dashboard["schemaVersion"] >= 36, "Grafana 10 writes schema 37 and later"
    assert dashboard["uid"] and dashboard.get("id") is None, "an importable dashboard has no id"
    panels = list(all_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{panel['title']}: no description"
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        assert panel["fieldConfig"]["defaults"].get("unit") or panel["type"] == "heatmap", (
            f"{panel['title']}: no unit")
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, (panel["title"], target["refId"])
            assert target["expr"].strip(), (panel["title"], target["refId"])
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), (panel["title"], refs)
    # Overlapping panels would be moved around by Grafana on import.
    cells = set()
    for panel in panels:
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells and x < 24, f"{panel['title']} overlaps at {x},{y}"
                cells.add((x, y))


@by_variant
def test_every_variable_used_is_defined(variant):
    dashboard = load_dashboard(variant)
    template = variables(dashboard)
    assert template["datasource"]["type"] == "datasource"
    assert template["datasource"]["query"] == "prometheus"
    texts = [target["expr"] for _panel, target in targets(dashboard)]
    texts += [panel["title"] for panel in all_panels(dashboard)]
    texts += [variable_query(var) for var in template.values() if var["type"] == "query"]
    for text in texts:
        unknown = names_used(text) - set(template) - set(GLOBALS)
        assert not unknown, f"undefined variables {unknown} in {text!r}"
    for name, var in template.items():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, name
            assert LABEL_VALUES.match(variable_query(var)), name
        if var.get("includeAll"):
            # Without it Grafana sends every value as one long alternation.
            assert var.get("allValue") == ".*", name


@by_variant
def test_threshold_options_are_duration_bucket_bounds(variant):
    template = variables(load_dashboard(variant))
    threshold = template["threshold"]
    options = [option["value"] for option in threshold["options"]]
    assert options
    if variant.native:
        # histogram_fraction() takes any bound: a number of seconds.
        assert all(float(option) > 0 for option in options), options
    else:
        # The `le` label values as the exporter writes them (prometheus_client's format).
        le_values = {floatToGoString(bound) for bound in DEFAULT_DURATION_BOUNDS}
        assert set(options) <= le_values, sorted(set(options) - le_values)
    # The options Grafana shows come from the query: both must say the same.
    from_query = [pair.split(" : ")[-1].strip() for pair in threshold["query"].split(",")]
    assert from_query == options
    assert threshold["current"]["value"] in options
    assert not threshold.get("multi") and not threshold.get("includeAll")


# ---------------------------------------------------------------- live


def _traffic(loads: list[Load], rounds: int, pause_s: float) -> None:
    """Sessions spread over a few scrapes, so that rates have samples to work from."""
    for _ in range(rounds):
        for load in loads:
            run_load(load)
        time.sleep(pause_s)


def _instant(prometheus: PrometheusServer, promql: str) -> tuple[list[dict] | None, str]:
    """The query's vector, or None and Prometheus's error."""
    try:
        return prometheus.api("query", query=promql)["result"], ""
    except urllib.error.HTTPError as err:
        return None, f"HTTP {err.code}: {err.read().decode(errors='replace')}"
    except AssertionError as err:
        return None, str(err)


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: v.histograms)
def scraped(request, tmp_path_factory):
    """A Prometheus server that scraped the exporter (with the variant's histograms)
    while IPv4 sessions of a few lifespans and sizes ran on two labelled ports, from this
    process's cgroup (the cgroup label is on); yields (server, instance, ports, variant)."""
    variant: Variant = request.param
    workdir = tmp_path_factory.mktemp(f"grafana-{variant.histograms}")
    quick, slow = free_port(), free_port()
    while slow == quick:
        slow = free_port()
    config = (f"ports: {{labelled: [{quick}, {slow}], auto: false}}\n"
              "filters: {family: ipv4}\nlabels: {cgroup: true}\n"
              f"histograms: {variant.histograms}\n")
    loads = {
        quick: [Load(port=quick, count=50, client_sends=300, server_sends=5000),
                Load(port=quick, count=15, client_sends=40, server_sends=70000, hold_s=0.01)],
        slow: [Load(port=slow, count=6, client_sends=2000, server_sends=100, hold_s=0.15)],
    }
    rounds = 3
    with ExporterProcess(config, workdir=workdir) as exporter, \
            PrometheusServer(workdir, [f"127.0.0.1:{exporter.port}"], job=JOB,
                             features=variant.features) as prometheus:
        instance = f"127.0.0.1:{exporter.port}"
        up = prometheus.wait_for(f'up{{job="{JOB}"}} == 1')
        assert up, prometheus.log()
        refused_connects(quick, 5)  # handshake failures of the quick port, outbound
        threads = [threading.Thread(target=_traffic, args=(port_loads, rounds, 0.8))
                   for port_loads in loads.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        # Every session scraped (each one closes twice: the client's and the server's end),
        # then two more scrapes so the last increase is inside every rate window.
        for port, port_loads in loads.items():
            sessions = 2 * rounds * sum(load.count for load in port_loads)
            counted = prometheus.wait_for(
                variant.sessions.format(f'job="{JOB}", port="{port}"') + f" == {sessions}")
            assert counted, (port, sessions, prometheus.log())
        time.sleep(2.5)
        yield prometheus, instance, (str(quick), str(slow)), variant


@pytest.mark.bpf
def test_every_panel_query_has_data(scraped):
    prometheus, instance, (quick, slow), variant = scraped
    dashboard = load_dashboard(variant)
    template = variables(dashboard)
    thresholds = [option["value"] for option in template["threshold"]["options"]]
    # Everything ("All"), two values of each, and one value of each.
    selections: list[Selection] = [
        {"job": JOB, "instance": ALL, "direction": ALL, "port": ALL, "cgroup": ALL},
        {"job": JOB, "instance": [instance], "direction": ["inbound", "outbound"],
         "port": [quick, slow], "cgroup": [own_cgroup()]},
        {"job": JOB, "instance": [instance], "direction": ["outbound"], "port": [slow],
         "cgroup": [own_cgroup()]},
    ]
    failures, queries = [], 0
    for panel, target in targets(dashboard):
        for chosen in selections:
            # Every threshold option where the query uses it, the default elsewhere.
            options = thresholds if "threshold" in names_used(target["expr"]) else [
                template["threshold"]["current"]["value"]]
            for threshold in options:
                promql = interpolate(target["expr"], template, {**chosen, "threshold": threshold})
                queries += 1
                result, error = _instant(prometheus, promql)
                where = f"{panel['title']} [{target['refId']}] {chosen}: {promql}"
                if result is None:
                    failures.append(f"{where}\n  error: {error}")
                elif not any(math.isfinite(_count(r)) for r in result):
                    failures.append(f"{where}\n  no data (empty, or only NaN): {result}")
                else:
                    failures += _outside_selection(where, result, chosen)
                    failures += _drawable(where, result, panel, variant)
    assert not failures, f"{len(failures)} of {queries} queries:\n" + "\n".join(failures)


def _count(series: dict) -> float:
    """A float sample's value; a native histogram's count."""
    if "histogram" in series:
        return float(series["histogram"][1]["count"])
    return float(series["value"][1])


def _drawable(where: str, result: list[dict], panel: dict, variant: Variant) -> list[str]:
    """What the panel can draw: native histograms only in the native dashboard's heatmaps
    (Grafana 10 makes them heatmap cells), buckets as `le` series in the classic ones', and
    floats everywhere else."""
    wrong = []
    for series in result:
        histogram = "histogram" in series
        if panel["type"] != "heatmap":
            ok = not histogram
        elif variant.native:
            ok = histogram and bool(series["histogram"][1].get("buckets"))
        else:
            ok = not histogram and "le" in series["metric"]
        if not ok:
            wrong.append(f"{where}\n  {panel['type']} panel cannot draw: {series}")
    return wrong


def _outside_selection(where: str, result: list[dict], chosen: Selection) -> list[str]:
    """Series whose labels the variables should have filtered out."""
    wrong = []
    for series in result:
        for label in ("instance", "direction", "port", "cgroup"):
            picked = chosen[label]
            value = series["metric"].get(label)
            if picked != ALL and value is not None and value not in picked:
                wrong.append(f"{where}\n  {label}={value} not selected: {series['metric']}")
    return wrong


@pytest.mark.bpf
def test_every_variable_query_has_values(scraped):
    prometheus, instance, (quick, slow), variant = scraped
    template = variables(load_dashboard(variant))
    chosen: Selection = {"job": JOB, "instance": ALL}
    expected = {"job": {JOB}, "instance": {instance},
                "direction": {"inbound", "outbound"}, "port": {quick, slow},
                "cgroup": {own_cgroup()}}
    queried = set()
    for name, var in template.items():
        if var["type"] != "query":
            continue
        match = LABEL_VALUES.match(interpolate(variable_query(var), template, chosen))
        selector, label = match.group(1).strip(), match.group(2)
        # Grafana asks for label values through the same API, matched by the selector.
        values = set(prometheus.api(f"label/{label}/values", **{"match[]": selector}))
        assert expected[name] <= values, (name, selector, values)
        queried.add(name)
    assert queried == set(expected)
