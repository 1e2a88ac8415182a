"""Reading pipeline YAML files into ``Pipeline``, with errors that name file, line and field.

The YAML is composed into nodes first (which keep their line), and the nodes are checked
one key at a time, so every error points at the offending key or value. The first problem
found is raised as ``PipelineError``; a folder is read file by file, so one broken file
never stops the others. The format is described in docs/pipelines.md.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yaml.nodes import Node

from runwatch.workflow.spec import DQM_ROLES, Pipeline, Scope, Step
from runwatch.workflow.templates import (
    TemplateError,
    check_template,
    output_path_problem,
    template_variables,
)
from runwatch.yamlnodes import (
    Entry,
    NodeReader,
    YamlFileError,
    composed,
    node_kind,
)

PIPELINE_SUFFIXES = (".yaml", ".yml")
TOP_KEYS = ("name", "description", "streams", "params", "steps")
STEP_KEYS = (
    "scope",
    "needs",
    "command",
    "threads",
    "memory",
    "disk",
    "retries",
    "timeout",
    "outputs",
    "batch",
    "every",
    "dqm",
    "sample_fraction",
    "params",
    "submit",
)
SCOPES: tuple[Scope, ...] = ("file", "run")
# Names go into task keys ("pipeline/step/file:ID") and database columns of 128 characters.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
STEP_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$")
OUTPUT_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # usable as ``outputs.NAME``
MEMORY_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT])?(?:i?B)?$", re.IGNORECASE)
MEMORY_UNIT_MB = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
DURATION_RE = re.compile(r"^(?:\d+(?:\.\d+)?[dhms])+$")
PLAIN_NUMBER_RE = re.compile(r"^\d+(?:\.\d+)?$")
DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
DURATION_UNIT_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# Template variables of each scope (see the Step docstring); ``outputs`` only in commands.
COMMON_VARIABLES = frozenset({"run", "inputs", "task", "threads", "sample_fraction", "params"})
SCOPE_VARIABLES = {"file": COMMON_VARIABLES | {"file"}, "run": COMMON_VARIABLES}


class PipelineError(YamlFileError):
    """One problem in a pipeline file: ``str()`` is "path:line: field: problem"."""


@dataclass(frozen=True)
class LoadedPipeline:
    """A valid pipeline file: its text (stored as a revision), the text's sha256, the parse."""

    path: Path
    text: str
    digest: str
    pipeline: Pipeline


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_pipeline(text: str, path: str | Path) -> Pipeline:
    """Parse and check a pipeline file's text; raise PipelineError for the first problem."""
    with composed(text, path, PipelineError) as (root, loader):
        return _Parser(path, loader).pipeline(root)


def load_pipeline(path: str | Path) -> LoadedPipeline:
    """Read and parse one file; an unreadable file is a PipelineError too."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PipelineError(path, None, "", f"not UTF-8 text: {exc.reason}") from exc
    except OSError as exc:
        raise PipelineError(path, None, "", f"cannot read the file: {exc.strerror}") from exc
    return LoadedPipeline(path, text, digest_of(text), parse_pipeline(text, path))


def pipeline_files(folder: str | Path) -> list[Path]:
    """The pipeline files of a folder, by name; editors' hidden temporary files are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.name.endswith(PIPELINE_SUFFIXES) and p.name[0] != "."
    )


def load_pipelines(paths: Iterable[str | Path]) -> tuple[list[LoadedPipeline], list[PipelineError]]:
    """Load each file; a broken file or a second file with a name already taken is an error."""
    loaded: list[LoadedPipeline] = []
    errors: list[PipelineError] = []
    by_name: dict[str, Path] = {}
    for path in paths:
        try:
            item = load_pipeline(path)
        except PipelineError as exc:
            errors.append(exc)
            continue
        name = item.pipeline.name
        if name in by_name:
            errors.append(
                PipelineError(
                    item.path,
                    _name_line(item.text),
                    "name",
                    f"pipeline {name!r} is already defined in {by_name[name]}",
                )
            )
            continue
        by_name[name] = item.path
        loaded.append(item)
    return loaded, errors


def load_pipeline_folder(folder: str | Path) -> tuple[list[LoadedPipeline], list[PipelineError]]:
    """All ``*.yaml`` / ``*.yml`` files of ``folder`` (a missing folder has none)."""
    return load_pipelines(pipeline_files(folder))


def _name_line(text: str) -> int | None:
    match = re.search(r"^name\s*:", text, re.MULTILINE)
    return None if match is None else text.count("\n", 0, match.start()) + 1


# ---------------------------------------------------------------------------------------


class _Parser(NodeReader):
    """The pipeline schema on top of the YAML node checks."""

    error = PipelineError

    # -- the pipeline ----------------------------------------------------------------------

    def pipeline(self, root: Node | None) -> Pipeline:
        if root is None:
            raise PipelineError(
                self.path, 1, "", "the file is empty; a pipeline needs streams and steps"
            )
        top = self.mapping(root, "", "a mapping with the keys streams and steps")
        self.known(top, TOP_KEYS, "")
        name = self.pipeline_name(top)
        description = ""
        if "description" in top:
            description = self.string(top["description"].value, "description").strip()
        if "streams" not in top:
            self.fail(
                root, "streams", "missing: list the streams whose files this pipeline runs on"
            )
        streams = self.names(top["streams"].value, "streams", "stream names")
        if not streams:
            self.fail(top["streams"].value, "streams", "expected at least one stream")
        params = self.params(top["params"].value, "params") if "params" in top else {}
        if "steps" not in top:
            self.fail(root, "steps", "missing: a mapping of step names to steps")
        steps = self.steps(top["steps"].value)
        return Pipeline(
            name=name,
            streams=tuple(s for s, _ in streams),
            steps=steps,
            params=params,
            description=description,
        )

    def pipeline_name(self, top: dict[str, Entry]) -> str:
        if "name" in top:
            node = top["name"].value
            name = self.string(node, "name", "a pipeline name")
            if not NAME_RE.match(name):
                self.fail(node, "name", f"{name!r} is not a valid name: {_NAME_RULE}")
            return name
        stem = Path(self.path).stem
        if not NAME_RE.match(stem):
            self.fail(
                None,
                "name",
                f"none given, and the file name {stem!r} is not a valid name: "
                f"{_NAME_RULE}; add a name: key",
            )
        return stem

    def steps(self, node: Node) -> dict[str, Step]:
        entries = self.mapping(node, "steps", "a mapping of step names to steps")
        if not entries:
            self.fail(node, "steps", "expected at least one step")
        order = list(entries)
        steps: dict[str, Step] = {}
        for name, entry in entries.items():
            if not STEP_NAME_RE.match(name):
                self.fail(
                    entry.key,
                    f"steps.{name}",
                    "a step name starts with a letter or _ and has only letters, digits, _ and -",
                )
            steps[name] = _StepParser(self, name, entry, steps, order).step()
        return steps


_NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit"


class _StepParser:
    """One step; ``earlier`` holds the steps above it, which are all it may need."""

    def __init__(
        self, parser: _Parser, name: str, entry: Entry, earlier: dict[str, Step], order: list[str]
    ) -> None:
        self.p = parser
        self.name = name
        self.key = entry.key
        self.node = entry.value
        self.earlier = earlier
        self.order = order
        self.field = f"steps.{name}"
        self.values: dict[str, Any] = {}

    def step(self) -> Step:
        entries = self.p.mapping(self.node, self.field, "a mapping of step settings")
        self.p.known(entries, STEP_KEYS, self.field)
        scope: Scope = "file"
        if "scope" in entries:
            scope = self.scope(entries["scope"].value)
        for key, entry in entries.items():
            if key != "scope":
                getattr(self, f"key_{key}")(entry.value, f"{self.field}.{key}", scope)
        if "command" not in entries:
            self.p.fail(self.key, f"{self.field}.command", "missing: the step's command")
        if "batch" in entries:
            self.check_batch(entries["batch"].value, scope)
        if "every" in entries:
            self.check_every(entries, scope)
        if "dqm" in entries:
            self.check_dqm(entries["dqm"].value, scope)
        return Step(name=self.name, scope=scope, **self.values)

    def scope(self, node: Node) -> Scope:
        value = self.p.value(node)
        for scope in SCOPES:
            if value == scope:
                return scope
        self.p.fail(node, f"{self.field}.scope", f"expected file or run, got {node_kind(node)}")

    def key_needs(self, node: Node, field: str, scope: Scope) -> None:
        needs = self.p.names(node, field, "step names")
        for need, item in needs:
            if need == self.name:
                self.p.fail(item, field, "a step cannot need itself")
            if need not in self.earlier:
                if need in self.order:
                    problem = (
                        f"{need!r} comes later in the file; a step can only need steps above it"
                    )
                else:
                    known = ", ".join(self.earlier) or "none"
                    problem = f"no step named {need!r} above this one (steps above: {known})"
                self.p.fail(item, field, problem)
            if scope == "file" and self.earlier[need].scope == "run":
                self.p.fail(
                    item, field, f"a file-scoped step cannot need the run-scoped step {need!r}"
                )
        self.values["needs"] = tuple(n for n, _ in needs)

    def template(self, node: Node, field: str, source: str, scope: Scope, command: bool) -> None:
        try:
            check_template(source)
        except TemplateError as exc:
            line = node.start_mark.line + 1
            if exc.line is not None:
                # A block scalar (| or >) starts on the line after its indicator.
                line += exc.line if getattr(node, "style", None) in ("|", ">") else exc.line - 1
            raise PipelineError(self.p.path, line, field, exc.message) from exc
        # Catch misspelt variables now rather than when the first task is submitted.
        allowed = SCOPE_VARIABLES[scope] | ({"outputs"} if command else set())
        unknown = sorted(template_variables(source) - allowed)
        if unknown:
            where = f"a {scope}-scoped step's {'command' if command else 'output name'}"
            self.p.fail(
                node,
                field,
                f"unknown template variable{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(unknown)}; {where} can use {', '.join(sorted(allowed))}",
            )

    def key_command(self, node: Node, field: str, scope: Scope) -> None:
        command = self.p.string(node, field, "a command (a Jinja2 template)")
        self.template(node, field, command, scope, command=True)
        self.values["command"] = command

    def key_outputs(self, node: Node, field: str, scope: Scope) -> None:
        entries = self.p.mapping(node, field, "a mapping of output names to file names")
        outputs: dict[str, str] = {}
        for name, entry in entries.items():
            item_field = f"{field}.{name}"
            if not OUTPUT_NAME_RE.match(name):
                self.p.fail(
                    entry.key, item_field, "an output name is an identifier (letters, digits, _)"
                )
            path = self.p.string(entry.value, item_field, "a file name (a Jinja2 template)")
            problem = output_path_problem(path.strip())
            if problem is not None:
                self.p.fail(entry.value, item_field, f"the path {problem}")
            self.template(entry.value, item_field, path, scope, command=False)
            outputs[name] = path
        self.values["outputs"] = outputs

    def key_threads(self, node: Node, field: str, scope: Scope) -> None:
        self.values["threads"] = self.p.integer(node, field, 1)

    def key_retries(self, node: Node, field: str, scope: Scope) -> None:
        self.values["retries"] = self.p.integer(node, field, 0)

    def key_batch(self, node: Node, field: str, scope: Scope) -> None:
        self.values["batch"] = self.p.integer(node, field, 1)

    def check_batch(self, node: Node, scope: Scope) -> None:
        self.check_live_rule(node, "batch", scope)

    def check_live_rule(self, node: Node, key: str, scope: Scope) -> None:
        """``batch`` and ``every`` make tasks while the run is taken, from its files."""
        field = f"{self.field}.{key}"
        if scope != "run":
            self.p.fail(node, field, f"{key} only applies to run-scoped steps (scope: run)")
        needs = self.values.get("needs", ())
        if not needs or any(self.earlier[n].scope == "run" for n in needs):
            # The planner counts files whose needed steps are done: that needs file steps.
            self.p.fail(node, field, f"a step with {key} must need file-scoped steps only")

    def key_every(self, node: Node, field: str, scope: Scope) -> None:
        seconds = self.seconds(node, field)
        if seconds <= 0:
            self.p.fail(node, field, "expected a duration above 0, like 60s or 5m")
        self.values["every_s"] = seconds

    def check_every(self, entries: dict[str, Entry], scope: Scope) -> None:
        node = entries["every"].value
        self.check_live_rule(node, "every", scope)
        if "batch" in entries:
            # Both number their live tasks and both would chain them: one rule per step.
            self.p.fail(node, f"{self.field}.every", "a step has either batch or every, not both")

    def key_dqm(self, node: Node, field: str, scope: Scope) -> None:
        value = self.p.value(node)
        for role in DQM_ROLES:
            if value == role:
                self.values["dqm"] = role
                return
        self.p.fail(node, field, f"expected {', '.join(DQM_ROLES)}; got {node_kind(node)}")

    def check_dqm(self, node: Node, scope: Scope) -> None:
        field = f"{self.field}.dqm"
        if scope != "run":
            self.p.fail(node, field, "dqm: merge applies to run-scoped steps only (scope: run)")
        if len(self.values.get("outputs", {})) != 1:
            self.p.fail(
                node, field, "a dqm: merge step has exactly one output, the run's merged file"
            )

    def key_memory(self, node: Node, field: str, scope: Scope) -> None:
        self.values["memory_mb"] = self.megabytes(node, field)

    def key_disk(self, node: Node, field: str, scope: Scope) -> None:
        self.values["disk_mb"] = self.megabytes(node, field)

    def key_submit(self, node: Node, field: str, scope: Scope) -> None:
        """Extra batch settings: ``htcondor`` submit lines (a mapping of names to scalar
        values), ``slurm`` sbatch options (a list of ``--name[=value]``); any other
        executor's entry is kept as given, for its plugin to check."""
        entries = self.p.mapping(node, field, "a mapping of executor names to their settings")
        submit: dict[str, Any] = {}
        for name, entry in entries.items():
            where = f"{field}.{name}"
            if name == "htcondor":
                lines = self.p.mapping(entry.value, where, "a mapping of submit commands")
                submit[name] = {}
                for key, line in lines.items():
                    value = self.p.value(line.value)
                    if isinstance(value, dict | list) or value is None:
                        self.p.fail(line.value, f"{where}.{key}", "expected a single value")
                    # YAML's true/false become HTCondor's true/false, not Python's True/False
                    text = str(value).lower() if isinstance(value, bool) else str(value)
                    submit[name][key] = text
            elif name == "slurm":
                options = self.p.names(entry.value, where, "sbatch options")
                for option, option_node in options:
                    if not option.startswith("--"):
                        problem = f"expected an option like --qos=high, got {option!r}"
                        self.p.fail(option_node, where, problem)
                submit[name] = [option for option, _ in options]
            else:
                submit[name] = self.p.value(entry.value)
        self.values["submit"] = submit

    def megabytes(self, node: Node, field: str) -> int:
        """A size in MB: a whole number, or a size like 512MB or 2GB."""
        value = self.p.value(node)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        match = MEMORY_RE.match(value.strip()) if isinstance(value, str) else None
        if match is None:
            self.p.fail(
                node,
                field,
                f"expected MB as a whole number or a size like 512MB or 2GB, got {node_kind(node)}",
            )
        unit = (match.group(2) or "M").upper()
        return math.ceil(float(match.group(1)) * MEMORY_UNIT_MB[unit])

    def key_timeout(self, node: Node, field: str, scope: Scope) -> None:
        self.values["timeout_s"] = self.seconds(node, field)

    def seconds(self, node: Node, field: str) -> float:
        """A duration: seconds as a number, or ``90s``, ``30m``, ``1h30m``, ``1d``."""
        value = self.p.value(node)
        seconds: float | None = None
        if isinstance(value, str):
            text = value.replace(" ", "")
            if PLAIN_NUMBER_RE.match(text):
                seconds = float(text)
            elif DURATION_RE.match(text):
                parts = DURATION_PART_RE.findall(text)
                seconds = sum(float(n) * DURATION_UNIT_S[u] for n, u in parts)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        if seconds is None or not math.isfinite(seconds) or seconds < 0:
            self.p.fail(
                node,
                field,
                f"expected seconds or a duration like 90s, 30m, 1h30m; got {node_kind(node)}",
            )
        return seconds

    def key_sample_fraction(self, node: Node, field: str, scope: Scope) -> None:
        value = self.p.value(node)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            self.p.fail(node, field, f"expected a fraction 0 < f ≤ 1, got {node_kind(node)}")
        self.values["sample_fraction"] = float(value)

    def key_params(self, node: Node, field: str, scope: Scope) -> None:
        self.values["params"] = self.p.params(node, field)
