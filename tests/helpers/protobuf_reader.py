"""A reader of the delimited protobuf exposition format, for tests: written
apart from the exporter's encoder, from metrics.proto's field numbers, so
that a test compares the encoder with the definition, not with itself."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# (message, field number) -> (name, kind); kind: a message name, or a scalar type.
_FIELDS = {
    ("MetricFamily", 1): ("name", "string"), ("MetricFamily", 2): ("help", "string"),
    ("MetricFamily", 3): ("type", "uint"), ("MetricFamily", 4): ("metric", "Metric"),
    ("Metric", 1): ("label", "LabelPair"), ("Metric", 2): ("gauge", "Value"),
    ("Metric", 3): ("counter", "Counter"), ("Metric", 7): ("histogram", "Histogram"),
    ("LabelPair", 1): ("name", "string"), ("LabelPair", 2): ("value", "string"),
    ("Value", 1): ("value", "double"),
    ("Counter", 1): ("value", "double"), ("Counter", 3): ("created", "Timestamp"),
    ("Timestamp", 1): ("seconds", "uint"), ("Timestamp", 2): ("nanos", "uint"),
    ("Histogram", 1): ("sample_count", "uint"), ("Histogram", 2): ("sample_sum", "double"),
    ("Histogram", 3): ("bucket", "Bucket"), ("Histogram", 15): ("created", "Timestamp"),
    ("Histogram", 5): ("schema", "sint"), ("Histogram", 6): ("zero_threshold", "double"),
    ("Histogram", 7): ("zero_count", "uint"), ("Histogram", 12): ("positive_span", "Span"),
    ("Histogram", 13): ("positive_delta", "sint"),
    ("Bucket", 1): ("cumulative_count", "uint"), ("Bucket", 2): ("upper_bound", "double"),
    ("Span", 1): ("offset", "sint"), ("Span", 2): ("length", "uint"),
}


@dataclass
class Message:
    kind: str
    fields: dict[str, list] = field(default_factory=dict)

    def one(self, name: str, default=None):
        values = self.fields.get(name, [])
        assert len(values) <= 1, f"{self.kind}.{name} repeated"
        return values[0] if values else default

    def all(self, name: str) -> list:
        return self.fields.get(name, [])


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _unzigzag(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


def parse(kind: str, data: bytes) -> Message:
    message, at = Message(kind), 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        name, value_kind = _FIELDS[(kind, number)]  # an unknown field fails the test
        if wire == 0:
            raw, at = _varint(data, at)
            value = _unzigzag(raw) if value_kind == "sint" else raw
        elif wire == 1:
            (value,), at = struct.unpack_from("<d", data, at), at + 8
        elif wire == 2:
            length, at = _varint(data, at)
            chunk, at = data[at:at + length], at + length
            value = chunk.decode() if value_kind == "string" else parse(value_kind, chunk)
        else:
            raise AssertionError(f"wire type {wire} in {kind}")
        message.fields.setdefault(name, []).append(value)
    return message


def families(data: bytes) -> dict[str, Message]:
    """The delimited stream's MetricFamily messages by name."""
    found, at = {}, 0
    while at < len(data):
        length, at = _varint(data, at)
        family = parse("MetricFamily", data[at:at + length])
        at += length
        found[family.one("name")] = family
    return found


def labels(metric: Message) -> dict[str, str]:
    return {pair.one("name"): pair.one("value") for pair in metric.all("label")}
