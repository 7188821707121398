"""The Prometheus files in deploy/prometheus: valid for promtool, and every alert tested.

promtool comes with the Debian package `prometheus` (installed by `make deps`); its
unit tests in deploy/prometheus/tests/ feed synthetic series to the rules.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULE_FILES = sorted((DEPLOY / "rules").glob("*.yml"))
TEST_FILES = sorted((DEPLOY / "tests").glob("*.yml"))
SEVERITIES = {"info", "warning", "critical"}


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


def rules_of(kind: str) -> list[dict]:
    """Every rule of that kind ("alert" or "record") in deploy/prometheus/rules."""
    return [rule for path in RULE_FILES for group in load(path)["groups"]
            for rule in group["rules"] if kind in rule]


def test_the_files_exist():
    # Globs that match nothing would make the parametrized tests below vanish.
    assert RULE_FILES and TEST_FILES and rules_of("alert") and rules_of("record")


def test_scrape_config_is_valid_and_loads_every_rule_file():
    assert_ok(promtool("check", "config", "prometheus.yml"))
    listed = {DEPLOY / name for name in load(DEPLOY / "prometheus.yml")["rule_files"]}
    assert listed == set(RULE_FILES)


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rule_file_is_valid(path: Path):
    assert_ok(promtool("check", "rules", str(path)))


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
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


def test_every_alert_has_a_firing_unit_test():
    # A case with exp_alerts lists every alert expected then, so the other series of
    # that test are its not-firing cases; an alert without one is untested.
    defined = {rule["alert"] for rule in rules_of("alert")}
    tested, firing = set(), set()
    for path in TEST_FILES:
        for test in load(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                tested.add(case["alertname"])
                if case.get("exp_alerts"):
                    firing.add(case["alertname"])
    assert defined - firing == set(), "alerts without a firing case in deploy/prometheus/tests"
    # A misspelt name in a test with exp_alerts: [] would pass without testing anything.
    assert tested - defined == set(), "tests of alerts that do not exist"
