"""Whatever the config file holds, it loads or fails with ConfigError: never anything else."""

from __future__ import annotations

import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tcplife_exporter.config import ConfigError, ExporterConfig, parse_config

KEYS = ["buckets", "duration_seconds", "bytes", "ports", "labelled", "auto", "auto_limit",
        "labels", "comm", "remote_networks", "filters", "family", "local_ports",
        "remote_ports", "pid", "limits", "max_label_sets", "max_open_sessions", "office"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
    st.text(max_size=20), st.sampled_from(["10.0.0.0/8", "::1/128", "ipv4", "any", "1e-12"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=6),
                            st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8),
                                            inner, max_size=6)),
    max_leaves=30,
)
DOCUMENTS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6)


def loads_or_refuses(text: str) -> None:
    try:
        assert isinstance(parse_config(text, "prop.yaml"), ExporterConfig)
    except ConfigError as err:
        assert str(err).startswith("prop.yaml") and "\n" not in str(err)


@settings(max_examples=400, deadline=None)
@given(DOCUMENTS)
@example({"ports": {"a\nb": 1}})
def test_structured_documents(document):
    loads_or_refuses(yaml.safe_dump(document))


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text(text):
    loads_or_refuses(text)
