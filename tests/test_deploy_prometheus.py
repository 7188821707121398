"""The Prometheus files in deploy/prometheus: valid for promtool, and every alert tested.

promtool comes with the Debian package `prometheus` (installed by `make deps`); its
unit tests in deploy/prometheus/tests/ feed synthetic series to the rules.

The native-histogram variant (rules-native/) is tested by promtool where promtool 2.42 can
(tests-native/ feeds the alerts the float series that its recording rules record); its
input series cannot be native histograms, so its recording rules and the alert that reads a
native histogram run in a real Prometheus with native histograms on, scraping the exporter
with `histograms: native` during real sessions.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .helpers.exporting import ExporterProcess
from .helpers.prometheus_server import PrometheusServer
from .helpers.traffic import Load, free_port, run_load

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
CLASSIC_RULES = sorted((DEPLOY / "rules").glob("*.yml"))
NATIVE_RULES = sorted((DEPLOY / "rules-native").glob("*.yml"))
RULE_FILES = CLASSIC_RULES + NATIVE_RULES
CLASSIC_TESTS = sorted((DEPLOY / "tests").glob("*.yml"))
NATIVE_TESTS = sorted((DEPLOY / "tests-native").glob("*.yml"))
TEST_FILES = CLASSIC_TESTS + NATIVE_TESTS
SEVERITIES = {"info", "warning", "critical"}
# The session histograms by their own names: native histograms (a classic one's series
# have a suffix, and recorded series a `level:` before the name).
NATIVE_HISTOGRAM = re.compile(
    r"(?<![\w:])tcplife_session_(?:duration_seconds|sent_bytes|received_bytes)(?![\w:])")
SERIES_NAME = re.compile(r"(?<![\w:])[a-zA-Z_:][\w:]*")


def file_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs promtool from deploy/prometheus, where the config's relative paths start."""
    binary = shutil.which("promtool")
    assert binary, "promtool not found: `make deps` installs it (APT package prometheus)"
    return subprocess.run([binary, *args], cwd=DEPLOY, capture_output=True, text=True,
                          timeout=300)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n{result.stdout}{result.stderr}")


def load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def rules_of(kind: str, paths: list[Path] = RULE_FILES) -> list[dict]:
    """Every rule of that kind ("alert" or "record") in those files (both variants')."""
    return [rule for path in paths for group in load(path)["groups"]
            for rule in group["rules"] if kind in rule]


def alerts_of(paths: list[Path]) -> dict[str, dict]:
    return {rule["alert"]: rule for rule in rules_of("alert", paths)}


def test_the_files_exist():
    # Globs that match nothing would make the parametrized tests below vanish.
    for rules, tests in ((CLASSIC_RULES, CLASSIC_TESTS), (NATIVE_RULES, NATIVE_TESTS)):
        assert rules and tests and rules_of("alert", rules) and rules_of("record", rules)


def test_scrape_config_is_valid_and_loads_every_rule_file():
    assert_ok(promtool("check", "config", "prometheus.yml"))
    listed = {DEPLOY / name for name in load(DEPLOY / "prometheus.yml")["rule_files"]}
    assert listed == set(CLASSIC_RULES)  # rules-native/ replaces rules/ (README)


@pytest.mark.parametrize("path", RULE_FILES, ids=file_id)
def test_rule_file_is_valid(path: Path):
    assert_ok(promtool("check", "rules", str(path)))


@pytest.mark.parametrize("path", TEST_FILES, ids=file_id)
def test_promtool_unit_tests_pass(path: Path):
    result = promtool("test", "rules", str(path))
    assert_ok(result)
    assert "SUCCESS" in result.stdout, result.stdout


def test_alerts_have_severity_summary_and_description():
    for rule in rules_of("alert"):
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, rule["alert"]


def test_recording_rules_are_named_level_metric_operations():
    for rule in rules_of("record"):
        level, metric, operations = rule["record"].split(":")
        assert level == "port_direction" and metric.startswith("tcplife_") and operations


def alert_cases(paths: list[Path]) -> tuple[set[str], set[str]]:
    """The alerts that those promtool tests test, and those they see firing."""
    tested, firing = set(), set()
    for path in paths:
        for test in load(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                tested.add(case["alertname"])
                if case.get("exp_alerts"):
                    firing.add(case["alertname"])
    return tested, firing


def test_every_alert_has_a_firing_unit_test():
    # A case with exp_alerts lists every alert expected then, so the other series of
    # that test are its not-firing cases; an alert without one is untested.
    defined = set(alerts_of(CLASSIC_RULES))
    tested, firing = alert_cases(CLASSIC_TESTS)
    assert defined - firing == set(), "alerts without a firing case in deploy/prometheus/tests"
    # A misspelt name in a test with exp_alerts: [] would pass without testing anything.
    assert tested - defined == set(), "tests of alerts that do not exist"


def test_every_native_alert_has_a_firing_unit_test_where_promtool_can():
    native, classic = alerts_of(NATIVE_RULES), alerts_of(CLASSIC_RULES)
    tested, firing = alert_cases(NATIVE_TESTS)
    # An alert word for word the classic one is tested by tests/ (above). One that reads
    # a native histogram cannot be fed by promtool 2.42: test_native_rules_evaluate
    # runs it in a real Prometheus. Every other one needs a firing case in tests-native/.
    untested = {name for name, rule in native.items() if name not in firing
                and rule != classic.get(name) and not NATIVE_HISTOGRAM.search(rule["expr"])}
    assert untested == set(), "native alerts without a firing case in tests-native/"
    assert tested - set(native) == set(), "tests of alerts that do not exist"


def test_native_rules_record_what_the_classic_ones_do():
    # The same float series under the same names, so that the alerts, dashboards and
    # queries reading them work with either variant. The classic summed bucket rates have
    # no counterpart (Prometheus 2.42 discards recorded native histograms, README), and
    # the share of short sessions has no `_bucket` in its name.
    classic = {rule["record"] for rule in rules_of("record", CLASSIC_RULES)}
    native = {rule["record"]: rule for rule in rules_of("record", NATIVE_RULES)}
    expected = {name.replace("_bucket:", ":") for name in classic
                if not name.endswith("_bucket:rate5m")}
    assert native.keys() == expected
    for name, rule in native.items():
        assert not re.search(r"tcplife_session_\w+_(bucket|count|sum)\b", rule["expr"]), (
            f"{name} reads a classic histogram's series")
        assert NATIVE_HISTOGRAM.search(rule["expr"]), f"{name} reads no native histogram"


def test_native_alerts_are_the_classic_ones():
    classic, native = alerts_of(CLASSIC_RULES), alerts_of(NATIVE_RULES)
    assert native.keys() == classic.keys()
    native_records = {rule["record"] for rule in rules_of("record", NATIVE_RULES)}
    for name, rule in native.items():
        twin = classic[name]
        assert rule.get("for") == twin.get("for") and rule["labels"] == twin["labels"], name
        assert rule["annotations"]["summary"] == twin["annotations"]["summary"], name
        # Rewritten only where the classic expression reads what the native rules do not
        # have: a classic histogram's series, or a series recorded from its buckets.
        classic_only = {series for series in SERIES_NAME.findall(twin["expr"])
                        if re.fullmatch(r"tcplife_session_\w+_(bucket|count|sum)", series)
                        or (":" in series and series not in native_records)}
        if not classic_only:
            assert rule == twin, f"{name} differs from the classic alert"
        else:
            assert rule["expr"] != twin["expr"], (name, classic_only)


# ---------------------------------------------------------------- native, live

QUICK, HELD, HOLD_S, ROUNDS = 40, 10, 0.05, 3
CLIENT_SENDS, SERVER_SENDS = 300, 5000
# A schema 3 bucket spans a factor 2^(1/8): where a quantile of equal values must be.
BUCKET = 2 ** (1 / 8)


@pytest.fixture(scope="module")
def native_rules(tmp_path_factory):
    """A Prometheus server with native histograms on and the rules of rules-native/,
    which scraped the exporter (`histograms: native`, job "tcplife" as the alerts want)
    while IPv4 sessions ran on one labelled port: QUICK sessions of no hold and HELD
    ones held HOLD_S, each ROUNDS times, all with the same payloads. Yields
    (server, port) once every recording rule has seen all the sessions."""
    workdir = tmp_path_factory.mktemp("native-rules")
    port = free_port()
    config = (f"ports: {{labelled: [{port}], auto: false}}\nfilters: {{family: ipv4}}\n"
              "histograms: native\n")
    loads = [Load(port=port, count=QUICK, client_sends=CLIENT_SENDS, server_sends=SERVER_SENDS),
             Load(port=port, count=HELD, client_sends=CLIENT_SENDS, server_sends=SERVER_SENDS,
                  hold_s=HOLD_S)]
    with ExporterProcess(config, workdir=workdir) as exporter, \
            PrometheusServer(workdir, [f"127.0.0.1:{exporter.port}"],
                             features=["native-histograms"], rule_files=NATIVE_RULES) as prometheus:
        assert prometheus.wait_for('up{job="tcplife"} == 1'), prometheus.log()
        for _ in range(ROUNDS):  # over a few scrapes, so that rates have samples
            for load in loads:
                run_load(load)
            time.sleep(0.8)
        sessions = ROUNDS * (QUICK + HELD)
        for direction in ("inbound", "outbound"):
            counted = prometheus.wait_for(
                f'histogram_count(tcplife_session_duration_seconds{{port="{port}", '
                f'direction="{direction}"}}) == {sessions}')
            assert counted, (direction, sessions, prometheus.query(
                f'tcplife_session_duration_seconds{{port="{port}"}}'), prometheus.log())
        # The hour-long group runs once a minute: wait for a run that saw every session,
        # i.e. one evaluated after the scrape that counted them all. (The share alone
        # cannot tell: every round has the same mix, so a run between rounds has it too,
        # and its session rate then lacked the later rounds: seen once in CI.)
        counted_at = time.time()
        share = QUICK / (QUICK + HELD)
        for name in ("port_direction:tcplife_session_duration_seconds:ratio_rate5m",
                     "port_direction:tcplife_session_duration_seconds:ratio_rate1h"):
            seen = prometheus.wait_for(f'abs({name}{{port="{port}"}} - {share}) < 1e-9 and '
                                       f'timestamp({name}{{port="{port}"}}) > {counted_at}',
                                       timeout=90)
            assert len(seen) == 2, (name, share, prometheus.query(f'{name}{{port="{port}"}}'))
        yield prometheus, str(port)


def _by_direction(prometheus: PrometheusServer, name: str, port: str) -> dict[str, dict]:
    return {r["metric"]["direction"]: r for r in prometheus.query(f'{name}{{port="{port}"}}')}


def _within_bucket(value: float, exact: float) -> bool:
    return exact / BUCKET < value <= exact * BUCKET


@pytest.mark.bpf
def test_native_recording_rules_record_the_sessions(native_rules):
    prometheus, port = native_rules
    records = {rule["record"]: rule for rule in rules_of("record", NATIVE_RULES)}
    sent = {"inbound": SERVER_SENDS, "outbound": CLIENT_SENDS}  # the server answers inbound
    received = {"inbound": CLIENT_SENDS, "outbound": SERVER_SENDS}
    sessions = ROUNDS * (QUICK + HELD)
    checked = set()
    for name, rule in records.items():
        found = _by_direction(prometheus, name, port)
        assert found.keys() == {"inbound", "outbound"}, (name, found)
        for direction, series in found.items():
            labels = set(series["metric"]) - {"__name__"}
            assert labels == {"port", "direction", *rule.get("labels", {})}, (name, series)
            assert "value" in series, (name, series)  # a float, not a histogram
            value = float(series["value"][1])
            assert math.isfinite(value), (name, series)
            operation = name.split(":")[2]
            if name.endswith("_count:" + operation):  # sessions per second
                # Every session is in the window; rate() extrapolates the increase by
                # half a scrape interval at each end of the samples (a few, at least).
                window = 300 if operation == "rate5m" else 3600
                assert sessions <= value * window < 1.5 * sessions, (name, series)
            elif operation.startswith("ratio_"):  # the QUICK ones lasted under 10 ms
                assert abs(value - QUICK / (QUICK + HELD)) < 1e-9, (name, series)
            elif "_duration_seconds:p50" in name:  # rank 25 of 50: a QUICK one
                assert value < 0.01, (name, series)
            elif "_duration_seconds:p" in name:  # rank 45 or 49.5: a HELD one
                assert HOLD_S / BUCKET < value < 2 * HOLD_S, (name, series)
            elif name.endswith("_sum:rate5m"):  # payload bytes per second
                # Per session: divided by the session rate of the same evaluation.
                per_session = _by_direction(
                    prometheus, f"{name} / port_direction:tcplife_session_duration_seconds_count:"
                    f"rate5m", port)[direction]
                exact = (sent if "_sent_" in name else received)[direction]
                assert abs(float(per_session["value"][1]) - exact) < 1e-6 * exact, (
                    name, per_session, exact)
            else:  # byte quantiles: every session carried the same payload
                exact = (sent if "_sent_" in name else received)[direction]
                assert _within_bucket(value, exact), (name, series, exact)
            checked.add(name)
    assert checked == set(records)


def _without_filters(expr: str) -> str:
    """The alert's expression with yesterday's baselines read now and every comparison
    made a 0/1 one (`bool`): a series for each label set that all its operands have."""
    expr = re.sub(r"\s+offset\s+1d\b", "", expr)
    return re.sub(r"\{[^}]*\}|(==|!=|>=|<=|>|<)",
                  lambda m: f"{m.group(1)} bool" if m.group(1) else m.group(0), expr)


@pytest.mark.bpf
def test_native_rules_evaluate(native_rules):
    prometheus, port = native_rules
    loaded = {rule["name"]: rule for group in prometheus.api("rules")["groups"]
              for rule in group["rules"]}
    defined = rules_of("alert", NATIVE_RULES) + rules_of("record", NATIVE_RULES)
    assert loaded.keys() == {rule.get("alert") or rule["record"] for rule in defined}
    for name, rule in loaded.items():
        assert rule["health"] == "ok" and not rule.get("lastError"), (name, rule.get("lastError"))
        assert not rule["lastEvaluation"].startswith("0001-"), f"{name} never evaluated"
    for name, alert in alerts_of(NATIVE_RULES).items():
        probe = _without_filters(alert["expr"])
        result = prometheus.query(probe)
        if probe == alert["expr"]:  # no comparison: absent()
            assert result == [], (name, result)  # the target is there
        elif name.startswith("TcplifePort"):  # per port and direction
            mine = {r["metric"]["direction"] for r in result if r["metric"]["port"] == port}
            assert mine == {"inbound", "outbound"}, (name, probe, result)
        else:  # per exporter
            assert {r["metric"]["job"] for r in result} == {"tcplife"}, (name, probe, result)
