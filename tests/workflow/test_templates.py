"""Step templates: quoting, strict variables, output path rules, loops, and the example
pipeline's commands really running with plain shell tools."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from runwatch.examples import example_pipelines
from runwatch.workflow.pipeline_file import parse_pipeline
from runwatch.workflow.spec import Pipeline, Step
from runwatch.workflow.templates import TemplateError, check_template, render, render_step


def _context(**extra: Any) -> dict[str, Any]:
    context: dict[str, Any] = {
        "run": {"number": 1001, "stream": "Physics"},
        "inputs": ["/data/raw/a file.rtraw", "/data/raw/b'quote.rtraw"],
        "task": {"id": 7, "key": "keepup/merge/run:3", "batch": None, "final": True},
    }
    context.update(extra)
    return context


def _pipeline(*steps: Step, params: dict[str, Any] | None = None) -> Pipeline:
    return Pipeline("p", ("Physics",), {s.name: s for s in steps}, params or {})


def test_quote_filter_makes_any_name_one_shell_word() -> None:
    text = render("ls {{ inputs[0] | quote }} {{ inputs[1] | quote }} {{ 5 | quote }}", _context())
    assert text == "ls '/data/raw/a file.rtraw' '/data/raw/b'\"'\"'quote.rtraw' 5"
    completed = subprocess.run(
        ["sh", "-c", text.replace("ls", "printf '%s\\n'", 1)], capture_output=True, check=True
    )
    assert completed.stdout.decode().splitlines() == [
        "/data/raw/a file.rtraw",
        "/data/raw/b'quote.rtraw",
        "5",
    ]


def test_an_undefined_variable_is_an_error_that_names_it() -> None:
    with pytest.raises(TemplateError, match="'fiel' is undefined"):
        render("cp {{ fiel.name }} x", _context())
    with pytest.raises(TemplateError, match="has no attribute 'numbr'"):
        render("echo {{ run.numbr }}", _context())


def test_syntax_errors_give_the_line_inside_the_template() -> None:
    with pytest.raises(TemplateError) as caught:
        check_template("line one\nline two {{ oops\n")
    assert caught.value.line == 2
    assert "template syntax error" in str(caught.value)
    check_template("fine {{ x }}")


def test_a_failing_expression_becomes_a_template_error() -> None:
    with pytest.raises(TemplateError, match="TypeError"):
        render("{{ inputs + 1 }}", _context())


def test_loops_and_trailing_newline() -> None:
    source = "cat {% for i in inputs %}{{ i | quote }} {% endfor %}> merged\n"
    assert render(source, _context(inputs=["/a", "/b c"])) == "cat /a '/b c' > merged"


def test_render_step_renders_outputs_first_then_the_command() -> None:
    step = Step(
        name="rec",
        command="rec -t {{ threads }} -f {{ sample_fraction }} -g {{ params.gain }} "
        "-o {{ outputs.rec | quote }} {{ inputs[0] | quote }}",
        outputs={"rec": " rec/{{ file.stem }}.root ", "log": "{{ file.stem }}.log"},
        threads=4,
        sample_fraction=0.5,
        params={"gain": 2},
    )
    pipeline = _pipeline(step, params={"gain": 1, "geometry": "v2"})
    command, outputs = render_step(step, pipeline, _context(file={"stem": "RUN.1001.001"}))
    assert outputs == {"rec": "rec/RUN.1001.001.root", "log": "RUN.1001.001.log"}
    assert command == ("rec -t 4 -f 0.5 -g 2 -o rec/RUN.1001.001.root '/data/raw/a file.rtraw'")
    # The caller's context wins (render_job passes params, threads, sample_fraction itself).
    command, _ = render_step(
        step, pipeline, _context(file={"stem": "f"}, threads=8, params={"gain": 3})
    )
    assert command.startswith("rec -t 8 -f 0.5 -g 3 ")


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("/abs/{{ file.stem }}", "must be relative"),
        ("{{ file.stem }}/../../x", "no '..'"),
        ("{{ file.meta.missing }}", "has no attribute 'missing'"),
        ("{{ file.meta.empty }}", "is empty"),
        ("{{ file.stem }}\nx", "single line"),
    ],
)
def test_output_paths_must_stay_in_the_work_directory(output: str, problem: str) -> None:
    step = Step(name="calib", command="true", outputs={"c": output})
    context = _context(file={"stem": "RUN.1", "meta": {"empty": ""}})
    with pytest.raises(TemplateError) as caught:
        render_step(step, _pipeline(step), context)
    assert problem in str(caught.value)
    assert str(caught.value).startswith("pipeline p, step calib, output c:")


def test_an_empty_command_is_refused() -> None:
    step = Step(name="calib", command="{% if false %}x{% endif %}")
    with pytest.raises(TemplateError, match="empty command"):
        render_step(step, _pipeline(step), _context())


def test_rendering_is_fast() -> None:
    step = Step(
        name="merge",
        scope="run",
        command="hadd {{ outputs.m }}{% for i in inputs %} {{ i | quote }}{% endfor %}",
        outputs={"m": "run{{ run.number }}.root"},
    )
    pipeline = _pipeline(step)
    context = _context(inputs=[f"/data/f{i}.root" for i in range(20)])
    start = time.perf_counter()
    for _ in range(2000):
        render_step(step, pipeline, context)
    per_task = (time.perf_counter() - start) / 2000
    assert per_task < 0.001, f"{per_task * 1e6:.0f} µs per task"


def test_example_pipeline_runs_with_plain_shell_tools(tmp_path: Path) -> None:
    example = example_pipelines()[0]
    pipeline = parse_pipeline(example.read_text(encoding="utf-8"), example.name)
    raw = tmp_path / "RUN.1001.JUNODAQ.Physics.ds-2.global_trigger.20250826120000.001_J25.rtraw"
    raw.write_bytes(bytes(range(256)) * 40)

    def run(step_name: str, inputs: list[Path], **task: Any) -> list[Path]:
        step = pipeline.steps[step_name]
        context = _context(inputs=[str(p) for p in inputs])
        context["task"].update(task)
        if step.scope == "file":
            context["file"] = {"stem": raw.name.rsplit(".", 1)[0], "sequence": 1}
        command, outputs = render_step(step, pipeline, context)
        subprocess.run(["sh", "-c", command], cwd=tmp_path, check=True, timeout=30)
        return [tmp_path / path for path in outputs.values()]

    calibrated, constants = run("calib", [raw])
    assert calibrated.read_bytes() == raw.read_bytes()
    assert constants.read_text().splitlines() == ["detector generic", "gain 1.0", "run 1001 file 1"]
    (rec,) = run("rec", [calibrated, constants])
    assert rec.stat().st_size == raw.stat().st_size // 2  # sample_fraction 0.5
    (hist,) = run("hist", [rec])
    counts = [line.split() for line in hist.read_text().splitlines()]
    assert counts[0] == ["20", "0"] and len(counts) == 256  # 5120 bytes = 20 x each value
    (batch,) = run("merge", [hist, hist], batch=1, final=False)
    assert batch.name == "run1001.batch1.hist.txt"
    assert batch.read_text().splitlines()[:2] == ["40 0", "40 1"]
    (final,) = run("merge", [hist])
    assert final.name == "run1001.hist.txt"
    assert final.read_text().splitlines()[255] == "20 255"
