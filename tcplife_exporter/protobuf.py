"""The delimited protobuf exposition format: what Prometheus asks for first
when its native histograms are on (the only format that carries them).

A stream of io.prometheus.client.MetricFamily messages (client_model's
metrics.proto), each preceded by its length as a varint. Written here from
the proto definition: the few message types the exporter's families need.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.samples import Sample

from .native import NativeBuckets, NativeHistogramFamily

PROTOBUF = ("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; "
            "encoding=delimited")
_COUNTER, _GAUGE, _HISTOGRAM = 0, 1, 4  # enum MetricType


_ONE_BYTE = [bytes([value]) for value in range(0x80)]  # most keys, counts and lengths


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@functools.cache
def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _zigzag(value: int) -> int:
    """sint32 and sint64: small magnitudes of either sign take few bytes."""
    return value << 1 if value >= 0 else (-value << 1) - 1


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _double(field: int, value: float) -> bytes:
    return _key(field, 1) + struct.pack("<d", value)


def _message(field: int, body: bytes) -> bytes:
    return _key(field, 2) + _varint(len(body)) + body


def _text(field: int, value: str) -> bytes:
    return _message(field, value.encode())


def _timestamp(seconds: float) -> bytes:
    """google.protobuf.Timestamp."""
    whole = int(seconds // 1)
    return _int(1, whole) + _int(2, min(round((seconds - whole) * 1e9), 999_999_999))


def _labels(labels: dict[str, str]) -> bytes:
    return b"".join(_message(1, _text(1, name) + _text(2, value))
                    for name, value in labels.items())


def _native(buckets: NativeBuckets) -> bytes:
    spans, deltas = buckets.spans_and_deltas()
    if not spans:  # no bucket yet: a span of none marks the histogram as native
        spans = [(0, 0)]
    return (_int(5, _zigzag(buckets.window.schema))
            + _double(6, buckets.window.zero_threshold)
            + _int(7, buckets.zero_count)
            + b"".join(_message(12, _int(1, _zigzag(offset)) + _int(2, length))
                       for offset, length in spans)
            + b"".join(_int(13, _zigzag(delta)) for delta in deltas))


def _histogram(family: Metric, samples: list[Sample]) -> bytes:
    """One label set's samples: _bucket (cumulative), _count, _sum, _created."""
    body = b""
    classic = not isinstance(family, NativeHistogramFamily) or family.classic
    for sample in samples:
        suffix = sample.name[len(family.name):]
        if suffix == "_bucket" and classic:
            body += _message(3, _int(1, int(sample.value))
                             + _double(2, float(sample.labels["le"])))
        elif suffix == "_count":
            body += _int(1, int(sample.value))
        elif suffix == "_sum":
            body += _double(2, sample.value)
        elif suffix == "_created":
            body += _message(15, _timestamp(sample.value))
    if isinstance(family, NativeHistogramFamily):
        labels = samples[0].labels
        native = family.native.get(tuple(labels[name] for name in family._labelnames))
        if native is not None:
            body += _native(native)
    return body


def _grouped(samples: Iterable[Sample]) -> list[list[Sample]]:
    """Samples by label set (a histogram's `le` aside), in their order."""
    groups: dict[tuple, list[Sample]] = {}
    for sample in samples:
        key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
        groups.setdefault(key, []).append(sample)
    return list(groups.values())


def _family(family: Metric) -> bytes:
    metrics = b""
    if family.type == "histogram":
        kind, name = _HISTOGRAM, family.name
        for samples in _grouped(family.samples):
            labels = {k: v for k, v in samples[0].labels.items() if k != "le"}
            metrics += _message(4, _labels(labels) + _message(7, _histogram(family, samples)))
    elif family.type == "counter":
        kind, name = _COUNTER, family.name + "_total"
        for samples in _grouped(family.samples):
            counter = b""
            for sample in samples:
                if sample.name == name:
                    counter += _double(1, sample.value)
                elif sample.name == family.name + "_created":
                    counter += _message(3, _timestamp(sample.value))
            metrics += _message(4, _labels(samples[0].labels) + _message(3, counter))
    else:  # gauges, and what the text format shows as gauges (info)
        kind, name = _GAUGE, family.samples[0].name if family.samples else family.name
        for sample in family.samples:
            metrics += _message(4, _labels(sample.labels) + _message(2, _double(1, sample.value)))
    return (_text(1, name) + _text(2, family.documentation) + _int(3, kind) + metrics)


def protobuf_exposition(registry: CollectorRegistry) -> bytes:
    out = bytearray()
    for family in registry.collect():
        if not family.samples:  # as in the text formats: no data, nothing to parse
            continue
        body = _family(family)
        out += _varint(len(body)) + body
    return bytes(out)
