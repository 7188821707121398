"""Strict reading of small YAML files (the config and the web config).

Values are read from the parser's node tree so that every error can name the
file, the line and the key's dotted path. Duplicate keys, which PyYAML would
silently collapse, are errors; so are keys a section does not know.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from .errors import TcplifeError


def read_text(path: str, what: str, error: type[TcplifeError]) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as err:
        raise error(f"{path}: cannot read the {what}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: the {what} is not UTF-8 text") from None


@dataclass
class Node:
    """A YAML node and its dotted path from the document root."""

    yaml: yaml.Node
    path: str

    @property
    def line(self) -> int:
        return self.yaml.start_mark.line + 1


class YamlReader:
    """Typed accessors over one document; failures raise ``error``."""

    def __init__(self, source: str, error: type[TcplifeError]) -> None:
        self.source = source
        self._error = error
        self._constructor = yaml.SafeLoader("")

    def root(self, text: str) -> Node | None:
        """The document's root node; None for an empty document."""
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{self.source}:{mark.line + 1}" if mark else self.source
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise self._error(f"{where}: not valid YAML: {problem}") from None
        return None if root is None else Node(root, "")

    def error(self, node: Node, message: str) -> TcplifeError:
        return self._error(f"{self.source}:{node.line}: {node.path or '(top level)'}: {message}")

    def value(self, node: Node) -> Any:
        try:
            return self._constructor.construct_object(node.yaml, deep=True)
        except yaml.YAMLError as err:
            raise self.error(node, f"cannot be read: {err.problem or err}") from None
        except (ValueError, OverflowError) as err:  # e.g. a timestamp out of range
            raise self.error(node, f"cannot be read: {err}") from None

    def is_null(self, node: Node) -> bool:
        return isinstance(node.yaml, yaml.ScalarNode) and self.value(node) is None

    def mapping(self, node: Node, allowed: Sequence[str] | None) -> dict[str, Node]:
        """A mapping's entries; with ``allowed``, any other key is an error."""
        if not isinstance(node.yaml, yaml.MappingNode):
            raise self.error(node, f"must be a mapping, got {_kind(self.value(node))}")
        entries: dict[str, Node] = {}
        for key_node, value_node in node.yaml.value:
            key = self.value(Node(key_node, node.path))
            if not isinstance(key, str):
                raise self.error(Node(key_node, node.path), f"key {key!r} must be a string")
            shown = key if key.isprintable() else repr(key)  # keep messages one line
            child = Node(value_node, f"{node.path}.{shown}" if node.path else shown)
            if key in entries:
                raise self.error(child, "appears twice")
            if allowed is not None and key not in allowed:
                raise self.error(child, _unknown_key(key, allowed))
            entries[key] = child
        return entries

    def sequence(self, node: Node, max_items: int) -> list[Node]:
        if not isinstance(node.yaml, yaml.SequenceNode):
            raise self.error(node, f"must be a list, got {_kind(self.value(node))}")
        if len(node.yaml.value) > max_items:
            raise self.error(node, f"has {len(node.yaml.value)} items; at most {max_items}")
        return [Node(item, f"{node.path}[{i}]") for i, item in enumerate(node.yaml.value)]

    def integer(self, node: Node, low: int, high: int) -> int:
        value = self.value(node)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(node, f"must be an integer from {low} to {high}, got {value!r}")
        return value

    def boolean(self, node: Node) -> bool:
        value = self.value(node)
        if not isinstance(value, bool):
            raise self.error(node, f"must be true or false, got {value!r}")
        return value

    def string(self, node: Node) -> str:
        value = self.value(node)
        if not isinstance(value, str) or not value:
            raise self.error(node, f"must be a non-empty string, got {_kind(value)}")
        return value


def _kind(value: object) -> str:
    names = {dict: "a mapping", list: "a list", type(None): "nothing"}
    return names.get(type(value), repr(value))


def _unknown_key(key: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(allowed)}"
    return f"unknown key; {hint}"
