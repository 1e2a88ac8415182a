"""Jinja2 templates of step commands and output names.

One shared environment: ``StrictUndefined`` (a misspelt variable is an error naming it, never
an empty string in a shell command), no autoescaping (these are shell commands, not HTML),
and a ``quote`` filter for putting file names safely on a command line. Compiled templates
are cached by their source text, so rendering a task costs one dictionary lookup plus the
render itself; the scheduler renders every job at submit time.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.meta

from runwatch.workflow.spec import Pipeline, Step


class TemplateError(ValueError):
    """A template that does not compile or does not render; ``line`` is within the template."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def _quote(value: object) -> str:
    return shlex.quote(str(value))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        auto_reload=False,
    )
    env.filters["quote"] = _quote
    return env


ENVIRONMENT = _environment()


@lru_cache(maxsize=4096)
def _compile(source: str) -> jinja2.Template:
    try:
        return ENVIRONMENT.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message}", exc.lineno) from exc


def check_template(source: str) -> None:
    """Raise TemplateError (with the line inside ``source``) if it does not compile."""
    _compile(source)


def template_variables(source: str) -> set[str]:
    """The variables a template takes from its context (loop variables left out)."""
    return set(jinja2.meta.find_undeclared_variables(ENVIRONMENT.parse(source)))


def render(source: str, context: Mapping[str, Any]) -> str:
    """Render ``source``; any failure, e.g. an undefined variable, becomes TemplateError."""
    template = _compile(source)
    try:
        return template.render(context)
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"undefined variable: {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template error: {exc}") from exc
    except Exception as exc:
        # A template is user code: a TypeError in it (e.g. ``inputs + 1``) must fail the
        # task with a reason, not the scheduler tick that renders it.
        raise TemplateError(f"template failed: {type(exc).__name__}: {exc}") from exc


def output_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be an output's path in the work directory, or None if it can."""
    if not path.strip():
        return "is empty"
    if path.startswith("/"):
        return "must be relative to the work directory, not start with '/'"
    if ".." in path.replace("\\", "/").split("/"):
        return "must stay inside the work directory (no '..')"
    if "\n" in path or "\0" in path:
        return "must be a single line"
    return None


def render_step(
    step: Step, pipeline: Pipeline, context: Mapping[str, Any]
) -> tuple[str, dict[str, str]]:
    """The command and the outputs (name → relative path) of one task of ``step``.

    Outputs are rendered first so that the command can name them as ``outputs.NAME``.
    ``params``, ``threads`` and ``sample_fraction`` come from the step when the caller's
    context lacks them.
    """
    full: dict[str, Any] = {
        "params": {**pipeline.params, **step.params},
        "threads": step.threads,
        "sample_fraction": step.sample_fraction,
        **context,
    }
    where = f"pipeline {pipeline.name}, step {step.name}"
    outputs: dict[str, str] = {}
    for name, source in step.outputs.items():
        try:
            path = render(source, full).strip()
        except TemplateError as exc:
            raise TemplateError(f"{where}, output {name}: {exc.message}", exc.line) from exc
        problem = output_path_problem(path)
        if problem is not None:
            raise TemplateError(f"{where}, output {name}: path {path!r} {problem}")
        outputs[name] = path
    try:
        command = render(step.command, {**full, "outputs": outputs})
    except TemplateError as exc:
        raise TemplateError(f"{where}, command: {exc.message}", exc.line) from exc
    if not command.strip():
        raise TemplateError(f"{where}, command: renders to an empty command")
    return command, outputs
