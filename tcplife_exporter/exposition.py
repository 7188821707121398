"""The exposition formats of a prometheus_client registry, faster.

prometheus_client's writers check every label name of every sample against
the naming rules; at 10,000 series that is most of a scrape. The names here
are the exporter's own and fixed, so these writers only escape label values,
once per distinct label set (labels sorted by name), and otherwise write
exactly what prometheus_client writes (a test compares them):

- the text format 0.0.4, which has no creation times: `_created` samples are
  left out (prometheus_client would add them as gauges, one more series per
  label set and family);
- OpenMetrics 1.0.0, with the `_created` samples.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.utils import floatToGoString

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

# Family types whose samples carry a suffix the family name lacks.
_NAME_SUFFIXES = {"counter": "_total", "info": "_info"}
# Family types the text format does not have, as prometheus_client maps them.
_TEXT_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram",
               "unknown": "untyped"}


def _escape_value(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def exposition(registry: CollectorRegistry, openmetrics: bool = False) -> bytes:
    lines: list[str] = []
    label_text: dict[tuple[tuple[str, str], ...], str] = {}
    for family in registry.collect():
        if openmetrics:
            lines.append(f"# HELP {family.name} {_escape_value(family.documentation)}\n"
                         f"# TYPE {family.name} {family.type}\n")
        else:
            name = family.name + _NAME_SUFFIXES.get(family.type, "")
            lines.append(f"# HELP {name} {_escape_help(family.documentation)}\n"
                         f"# TYPE {name} {_TEXT_TYPES.get(family.type, family.type)}\n")
        created = family.name + "_created"
        for sample in family.samples:
            if sample.name == created and not openmetrics:
                continue
            key = tuple(sample.labels.items())
            labels = label_text.get(key)
            if labels is None:
                inner = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(key))
                labels = label_text[key] = f"{{{inner}}}" if inner else ""
            if sample.timestamp is None:
                timestamp = ""
            elif openmetrics:
                timestamp = f" {sample.timestamp}"  # seconds
            else:
                timestamp = f" {int(sample.timestamp * 1000)}"  # milliseconds
            lines.append(f"{sample.name}{labels} {floatToGoString(sample.value)}{timestamp}\n")
    if openmetrics:
        lines.append("# EOF\n")
    return "".join(lines).encode()
