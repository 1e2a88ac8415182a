"""Reading YAML files whose every error names the file, the line and the field.

The YAML is composed into nodes first (they keep their line), and a ``NodeReader``
checks the nodes one key at a time, so an error points at the offending key or value.
Pipeline files (``workflow/pipeline_file.py``) and DQM check files (``dqm/checkspec.py``)
are read this way; each subclasses ``NodeReader`` with its own schema and error type.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlFileError(ValueError):
    """One problem in a YAML file: ``str()`` is "path:line: field: problem"."""

    def __init__(
        self,
        path: str | Path,
        line: int | None,
        field: str,
        problem: str,
        column: int | None = None,
    ) -> None:
        super().__init__(problem)
        self.path = str(path)
        self.line = line
        self.column = column
        self.field = field
        self.problem = problem

    def __reduce__(self) -> tuple[type[YamlFileError], tuple[Any, ...]]:
        return (type(self), (self.path, self.line, self.field, self.problem, self.column))

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return (
            f"{where}: {self.field}: {self.problem}" if self.field else f"{where}: {self.problem}"
        )


E = TypeVar("E", bound=YamlFileError)


def syntax_error(path: str | Path, exc: yaml.MarkedYAMLError, error: type[E]) -> E:
    mark = exc.problem_mark or exc.context_mark
    problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
    if mark is None:
        return error(path, None, "", f"YAML syntax error: {problem}")
    return error(
        path,
        mark.line + 1,
        "",
        f"YAML syntax error at column {mark.column + 1}: {problem}",
        column=mark.column + 1,
    )


@contextmanager
def composed(
    text: str, path: str | Path, error: type[YamlFileError]
) -> Iterator[tuple[Node | None, yaml.SafeLoader]]:
    """The root node of ``text`` (None for an empty file) and its loader; a YAML syntax
    error is raised as ``error`` with its line and column."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            raise syntax_error(path, exc, error) from exc
        except yaml.YAMLError as exc:
            raise error(path, None, "", f"YAML error: {exc}") from exc
        yield root, loader
    finally:
        loader.dispose()


def join_field(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def node_kind(node: Node) -> str:
    """How a node reads in an error message: "a mapping", "a number", 'abc'..."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    tag = node.tag.rsplit(":", 1)[-1]
    return {"null": "nothing", "bool": "true/false", "int": "a number", "float": "a number"}.get(
        tag, repr(node.value)
    )


@dataclass
class Entry:
    key: ScalarNode
    value: Node


class NodeReader:
    """Checks the composed YAML nodes of one file; every error names its node's line.

    Subclasses add their schema and set ``error`` to their own error type.
    """

    error: type[YamlFileError] = YamlFileError

    def __init__(self, path: str | Path, loader: yaml.SafeLoader) -> None:
        self.path = path
        self.loader = loader

    def fail(self, node: Node | None, field: str, problem: str) -> NoReturn:
        line = None if node is None else node.start_mark.line + 1
        raise self.error(self.path, line, field, problem)

    def value(self, node: Node) -> Any:
        return self.loader.construct_object(node, deep=True)

    def mapping(self, node: Node, field: str, what: str) -> dict[str, Entry]:
        if not isinstance(node, MappingNode):
            self.fail(node, field, f"expected {what}, got {node_kind(node)}")
        seen: dict[str, ScalarNode] = {}
        for key, _ in node.value:
            if key.tag == MERGE_TAG:
                continue
            if not isinstance(key, ScalarNode) or not isinstance(self.value(key), str):
                self.fail(key, field, f"keys must be names, got {node_kind(key)}")
            if key.value in seen:
                line = seen[key.value].start_mark.line + 1
                self.fail(
                    key, join_field(field, key.value), f"duplicate key (first given on line {line})"
                )
            seen[key.value] = key
        # YAML merge keys (<<: *defaults): merged entries come first, the node's own override.
        self.loader.flatten_mapping(node)
        entries: dict[str, Entry] = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode) or not isinstance(self.value(key), str):
                self.fail(key, field, f"keys must be names, got {node_kind(key)}")
            entries[key.value] = Entry(key, value)
        return entries

    def known(self, entries: dict[str, Entry], allowed: Sequence[str], field: str) -> None:
        unknown = [name for name in entries if name not in allowed]
        if not unknown:
            return
        close = difflib.get_close_matches(unknown[0], allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        names = ", ".join(repr(n) for n in unknown)
        self.fail(
            entries[unknown[0]].key,
            field,
            f"unknown key{'s' if len(unknown) > 1 else ''} {names}{hint}; "
            f"allowed keys: {', '.join(allowed)}",
        )

    def string(self, node: Node, field: str, what: str = "text") -> str:
        value = self.value(node) if isinstance(node, ScalarNode) else None
        if not isinstance(value, str) or not value.strip():
            self.fail(node, field, f"expected {what}, got {node_kind(node)}")
        return value

    def names(self, node: Node, field: str, what: str) -> list[tuple[str, Node]]:
        """A list of names (a single name is accepted as a list of one)."""
        items = node.value if isinstance(node, SequenceNode) else [node]
        if isinstance(node, MappingNode):
            self.fail(node, field, f"expected a list of {what}, got a mapping")
        out: list[tuple[str, Node]] = []
        for item in items:
            name = self.string(item, field, f"a list of {what}")
            if name in [n for n, _ in out]:
                self.fail(item, field, f"{name!r} is listed twice")
            out.append((name, item))
        return out

    def integer(self, node: Node, field: str, minimum: int) -> int:
        value = self.value(node)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(node, field, f"expected a whole number ≥ {minimum}, got {node_kind(node)}")
        return value

    def params(self, node: Node, field: str) -> dict[str, Any]:
        entries = self.mapping(node, field, "a mapping of parameter names to values")
        return {name: self.value(entry.value) for name, entry in entries.items()}
