"""The text exposition format (0.0.4) of a prometheus_client registry, faster.

prometheus_client's generate_latest() checks every label name of every
sample against the naming rules; at 10,000 series that is most of a scrape.
The names here are the exporter's own and fixed, so this writer only
escapes label values, once per distinct label set (labels sorted by name),
and otherwise writes exactly what generate_latest() writes (a test compares
the two).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.utils import floatToGoString

# Family types whose samples carry a suffix the family name lacks.
_NAME_SUFFIXES = {"counter": "_total", "info": "_info"}
# Family types the text format does not have, as generate_latest() maps them.
_TEXT_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram",
               "unknown": "untyped"}


def _escape_value(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def exposition(registry: CollectorRegistry) -> bytes:
    lines: list[str] = []
    label_text: dict[tuple[tuple[str, str], ...], str] = {}
    for family in registry.collect():
        name = family.name + _NAME_SUFFIXES.get(family.type, "")
        lines.append(f"# HELP {name} {_escape_help(family.documentation)}\n"
                     f"# TYPE {name} {_TEXT_TYPES.get(family.type, family.type)}\n")
        for sample in family.samples:
            key = tuple(sample.labels.items())
            labels = label_text.get(key)
            if labels is None:
                inner = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(key))
                labels = label_text[key] = f"{{{inner}}}" if inner else ""
            timestamp = "" if sample.timestamp is None else f" {int(sample.timestamp * 1000)}"
            lines.append(f"{sample.name}{labels} {floatToGoString(sample.value)}{timestamp}\n")
    return "".join(lines).encode()
