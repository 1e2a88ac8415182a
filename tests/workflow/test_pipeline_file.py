"""Pipeline files: a full valid file parses into Steps; every kind of mistake is reported with
the file, the line of the offending key or value, and the field."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest

from runwatch.examples import example_pipelines
from runwatch.workflow.pipeline_file import (
    PipelineError,
    load_pipeline,
    load_pipeline_folder,
    parse_pipeline,
)
from runwatch.workflow.spec import Step

FULL = """\
name: juno-keepup
description: JUNO keep-up chain
streams: [Physics, Calib]
params: {calib_constants: /cvmfs/juno/calib.json, gain: 1.5}
steps:
  calib:
    command: "calib {{ inputs[0] | quote }} -o {{ outputs.calib }}"
    outputs: {calib: "{{ file.stem }}.calib.root"}
    memory: 2GB
    timeout: 1h30m
    retries: 0
  rec:
    needs: calib
    threads: 4
    memory: 1500
    timeout: 90
    sample_fraction: 0.2
    params: {gain: 2.0}
    command: |
      rec --threads {{ threads }} --fraction {{ sample_fraction }} \\
          --gain {{ params.gain }} {{ inputs | join(' ') }}
    outputs:
      rec: "rec/{{ file.stem }}.rec.root"
      log: "{{ file.stem }}.log"
  merge:
    scope: run
    needs: [rec]
    batch: 10
    memory: 1.5G
    timeout: 30m
    command: "hadd {{ outputs.hist }}{% for i in inputs %} {{ i | quote }}{% endfor %}"
    outputs: {hist: "run{{ run.number }}.root"}
"""


def test_full_pipeline_parses_into_steps_in_file_order() -> None:
    pipeline = parse_pipeline(FULL, "/p/juno.yaml")
    assert pipeline.name == "juno-keepup"
    assert pipeline.description == "JUNO keep-up chain"
    assert pipeline.streams == ("Physics", "Calib")
    assert pipeline.params == {"calib_constants": "/cvmfs/juno/calib.json", "gain": 1.5}
    assert list(pipeline.steps) == ["calib", "rec", "merge"]
    calib, rec, merge = pipeline.steps.values()
    assert calib == Step(
        name="calib",
        command="calib {{ inputs[0] | quote }} -o {{ outputs.calib }}",
        outputs={"calib": "{{ file.stem }}.calib.root"},
        memory_mb=2048,
        timeout_s=5400.0,
        retries=0,
    )
    assert (rec.needs, rec.threads, rec.memory_mb, rec.timeout_s) == (("calib",), 4, 1500, 90.0)
    assert (rec.sample_fraction, rec.params, rec.retries) == (0.2, {"gain": 2.0}, 2)
    assert rec.command.startswith("rec --threads {{ threads }}")
    assert list(rec.outputs) == ["rec", "log"]
    assert (merge.scope, merge.needs, merge.batch) == ("run", ("rec",), 10)
    assert (merge.memory_mb, merge.timeout_s) == (1536, 1800.0)


def test_disk_and_batch_extras_parse() -> None:
    text = _edit(
        '    command: "cp',
        "    disk: 1.5GB\n"
        "    submit:\n"
        "      htcondor: {requirements: 'Arch == \"X86_64\"', +JunoJob: true}\n"
        "      slurm: [--qos=high, --constraint=avx2]\n"
        '    command: "cp',
    )
    calib = parse_pipeline(text, "/pipes/keepup.yaml").steps["calib"]
    assert calib.disk_mb == 1536
    assert calib.submit == {
        "htcondor": {"requirements": 'Arch == "X86_64"', "+JunoJob": "true"},
        "slurm": ["--qos=high", "--constraint=avx2"],
    }


def test_name_defaults_to_the_file_stem_and_merge_keys_work() -> None:
    text = """\
streams: Physics
defaults: &defaults
steps:
  a: &a
    command: "echo a > {{ outputs.x }}"
    outputs: {x: a.txt}
    threads: 2
  b:
    <<: *a
    needs: [a]
    threads: 3
"""
    with pytest.raises(PipelineError) as caught:  # streams must be a list; defaults unknown
        parse_pipeline(text, "/x/quick-look.yml")
    assert (caught.value.line, caught.value.field) == (2, "")
    assert "unknown key 'defaults'" in caught.value.problem
    pipeline = parse_pipeline(text.replace("defaults: &defaults\n", ""), "/x/quick-look.yml")
    assert pipeline.name == "quick-look"
    b = pipeline.steps["b"]
    assert (b.needs, b.threads, b.outputs) == (("a",), 3, {"x": "a.txt"})


def _engine_chain() -> str:
    """CHAIN of tests/workflow/engine.py, read without importing the whole engine stack."""
    module = ast.parse((Path(__file__).parent / "engine.py").read_text(encoding="utf-8"))
    for node in module.body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "CHAIN":
            return str(ast.literal_eval(node.value))
    raise AssertionError("no CHAIN in tests/workflow/engine.py")


def test_chain_of_the_engine_tests_parses() -> None:
    pipeline = parse_pipeline(_engine_chain(), "chain.yaml")
    assert list(pipeline.steps) == ["calib", "rec", "hist", "merge"]
    assert pipeline.steps["merge"].scope == "run"
    assert pipeline.steps["hist"].needs == ("rec",)


def test_example_pipelines_parse() -> None:
    examples = example_pipelines()
    assert [e.name for e in examples] == ["keepup.yaml"]
    pipeline = parse_pipeline(examples[0].read_text(encoding="utf-8"), examples[0].name)
    assert pipeline.streams == ("Physics", "Calib")
    assert [(s.name, s.scope, s.batch) for s in pipeline.steps.values()] == [
        ("calib", "file", None),
        ("rec", "file", None),
        ("hist", "file", None),
        ("merge", "run", 2),
    ]


def test_a_live_dqm_merge_step_parses() -> None:
    live = "    needs: [calib]\n    every: 1m30s\n    dqm: merge\n"
    steps = parse_pipeline(BASE.replace("    needs: [calib]\n", live), "p.yaml").steps
    merge, calib = steps["merge"], steps["calib"]
    assert (merge.every_s, merge.dqm, merge.batch) == (90.0, "merge", None)
    assert (calib.every_s, calib.dqm) == (None, None)
    seconds = BASE.replace("    needs: [calib]\n", "    needs: [calib]\n    every: 5\n")
    assert parse_pipeline(seconds, "p.yaml").steps["merge"].every_s == 5.0


def test_the_juno_pipeline_merges_each_run_live() -> None:
    path = Path(__file__).parents[2] / "src/runwatch/experiments/juno/pipelines/juno.yaml"
    merge = load_pipeline(path).pipeline.steps["merge"]
    assert (merge.scope, merge.needs, merge.every_s, merge.dqm) == ("run", ("hist",), 60.0, "merge")
    assert list(merge.outputs) == ["merged"]


BASE = """\
streams: [Physics]
steps:
  calib:
    command: "cp {{ inputs[0] }} {{ outputs.c }}"
    outputs: {c: "{{ file.stem }}.c"}
  merge:
    scope: run
    needs: [calib]
    command: "cat {{ inputs | join(' ') }} > {{ outputs.m }}"
    outputs: {m: "run{{ run.number }}.m"}
"""


def _error(text: str, path: str = "/pipes/keepup.yaml") -> PipelineError:
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(text, path)
    error = caught.value
    assert str(error).startswith(f"{path}:{error.line}: " if error.line else f"{path}: ")
    return error


def _edit(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        (
            BASE.replace("    outputs: {c:", "    thread: 2\n    outputs: {c:"),
            5,
            "steps.calib",
            ["unknown key 'thread'", "did you mean 'threads'", "allowed keys: scope, needs"],
        ),
        ("stream: [Physics]\n" + BASE, 1, "", ["unknown key 'stream'", "allowed keys: name"]),
        (BASE.replace("streams: [Physics]\n", ""), 1, "streams", ["missing"]),
        (BASE.replace("[Physics]", "[]"), 1, "streams", ["at least one stream"]),
        (
            _edit("    scope: run\n", "    scope: event\n"),
            7,
            "steps.merge.scope",
            ["expected file or run", "'event'"],
        ),
        (
            _edit("    needs: [calib]\n", "    needs: [calib, rec]\n"),
            8,
            "steps.merge.needs",
            ["no step named 'rec'", "steps above: calib"],
        ),
        (
            "streams: [P]\nsteps:\n  a:\n    needs: [b]\n    command: x\n  b:\n    command: y\n",
            4,
            "steps.a.needs",
            ["'b' comes later in the file"],
        ),
        (
            "streams: [P]\nsteps:\n  r:\n    scope: run\n    command: x\n  f:\n    needs: r\n"
            "    command: y\n",
            7,
            "steps.f.needs",
            ["file-scoped step cannot need", "'r'"],
        ),
        (
            "streams: [P]\nsteps:\n  f:\n    batch: 3\n    command: x\n",
            4,
            "steps.f.batch",
            ["batch only applies to run-scoped steps"],
        ),
        (
            "streams: [P]\nsteps:\n  r:\n    scope: run\n    batch: 3\n    command: x\n",
            5,
            "steps.r.batch",
            ["must need file-scoped steps"],
        ),
        (
            _edit('{c: "{{ file.stem }}.c"}', "{2c: x.c}"),
            5,
            "steps.calib.outputs.2c",
            ["identifier"],
        ),
        (_edit('{c: "{{ file.stem }}.c"}', "{c: ../x.c}"), 5, "steps.calib.outputs.c", ["no '..'"]),
        (
            _edit('{c: "{{ file.stem }}.c"}', "{c: /tmp/x.c}"),
            5,
            "steps.calib.outputs.c",
            ["must be relative"],
        ),
        (
            _edit('{c: "{{ file.stem }}.c"}', '{c: "{{ file.stem }.c"}'),
            5,
            "steps.calib.outputs.c",
            ["template syntax error"],
        ),
        (
            _edit("run{{ run.number }}.m", "run{{ file.stem }}.m"),
            10,
            "steps.merge.outputs.m",
            ["unknown template variable file", "run-scoped"],
        ),
        (
            _edit("{{ inputs[0] }}", "{{ input[0] }}"),
            4,
            "steps.calib.command",
            ["unknown template variable input"],
        ),
        (
            _edit('    command: "cp', '    threads: 0\n    command: "cp'),
            4,
            "steps.calib.threads",
            ["whole number ≥ 1", "a number"],
        ),
        (
            _edit('    command: "cp', '    retries: -1\n    command: "cp'),
            4,
            "steps.calib.retries",
            ["whole number ≥ 0"],
        ),
        (
            _edit('    command: "cp', '    memory: lots\n    command: "cp'),
            4,
            "steps.calib.memory",
            ["512MB or 2GB", "'lots'"],
        ),
        (
            _edit('    command: "cp', '    disk: big\n    command: "cp'),
            4,
            "steps.calib.disk",
            ["512MB or 2GB", "'big'"],
        ),
        (
            _edit('    command: "cp', '    submit: {slurm: [qos]}\n    command: "cp'),
            4,
            "steps.calib.submit.slurm",
            ["--qos=high", "'qos'"],
        ),
        (
            _edit('    command: "cp', '    submit: {htcondor: {rank: [a]}}\n    command: "cp'),
            4,
            "steps.calib.submit.htcondor.rank",
            ["a single value"],
        ),
        (
            _edit('    command: "cp', '    timeout: soon\n    command: "cp'),
            4,
            "steps.calib.timeout",
            ["1h30m"],
        ),
        (
            _edit('    command: "cp', '    sample_fraction: 1.5\n    command: "cp'),
            4,
            "steps.calib.sample_fraction",
            ["0 < f ≤ 1"],
        ),
        (
            _edit('    command: "cp', '    params: [1]\n    command: "cp'),
            4,
            "steps.calib.params",
            ["expected a mapping"],
        ),
        (
            _edit('    command: "cp {{ inputs[0] }} {{ outputs.c }}"\n', ""),
            3,
            "steps.calib.command",
            ["missing"],
        ),
        (
            BASE + "  calib:\n    command: again\n",
            11,
            "steps.calib",
            ["duplicate key", "first given on line 3"],
        ),
        (_edit("  calib:\n", "  calib/x:\n"), 3, "steps.calib/x", ["a step name"]),
        (
            _edit("    needs: [calib]\n", "    needs: [calib]\n    every: soon\n"),
            9,
            "steps.merge.every",
            ["duration like 90s"],
        ),
        (
            _edit("    needs: [calib]\n", "    needs: [calib]\n    every: 0s\n"),
            9,
            "steps.merge.every",
            ["above 0"],
        ),
        (
            _edit('    command: "cp', '    every: 60s\n    command: "cp'),
            4,
            "steps.calib.every",
            ["every only applies to run-scoped steps"],
        ),
        (
            _edit("    needs: [calib]\n", "    needs: [calib]\n    every: 1m\n    batch: 2\n"),
            9,
            "steps.merge.every",
            ["either batch or every"],
        ),
        (
            "streams: [P]\nsteps:\n  r:\n    scope: run\n    every: 60s\n    command: x\n",
            5,
            "steps.r.every",
            ["must need file-scoped steps"],
        ),
        (
            _edit("    needs: [calib]\n", "    needs: [calib]\n    dqm: hadd\n"),
            9,
            "steps.merge.dqm",
            ["expected merge", "'hadd'"],
        ),
        (
            _edit('    command: "cp', '    dqm: merge\n    command: "cp'),
            4,
            "steps.calib.dqm",
            ["run-scoped steps only"],
        ),
        (
            _edit('{m: "run{{ run.number }}.m"}', '{m: "a.m", n: "b.m"}').replace(
                "    needs: [calib]\n", "    needs: [calib]\n    dqm: merge\n"
            ),
            9,
            "steps.merge.dqm",
            ["exactly one output"],
        ),
        ("name: has space\n" + BASE, 1, "name", ["not a valid name"]),
        ("- a\n- b\n", 1, "", ["expected a mapping"]),
        ("", 1, "", ["the file is empty"]),
    ],
)
def test_each_mistake_names_its_line_and_field(
    text: str, line: int, field: str, words: list[str]
) -> None:
    error = _error(text)
    assert (error.line, error.field) == (line, field), str(error)
    for word in words:
        assert word in error.problem, str(error)


def test_template_syntax_errors_point_at_the_line_inside_a_block_command() -> None:
    text = _edit(
        '    command: "cp {{ inputs[0] }} {{ outputs.c }}"\n',
        "    command: |\n      echo one\n      echo {% if %}\n",
    )
    error = _error(text)
    assert (error.line, error.field) == (6, "steps.calib.command")
    assert "template syntax error" in error.problem


def test_yaml_syntax_errors_give_line_and_column() -> None:
    error = _error(BASE.replace("  merge:\n", "  merge: [\n"))
    assert (error.line, error.column, error.field) == (8, 10, "")
    assert error.problem == (
        "YAML syntax error at column 10: while parsing a flow sequence expected ',' or ']', "
        "but got ':'"
    )
    error = _error("streams: [P]\nsteps:\n  a:\n    command: x: y\n")
    assert (error.line, error.column) == (4, 15)
    assert str(error) == (
        "/pipes/keepup.yaml:4: YAML syntax error at column 15: mapping values are not allowed here"
    )


def test_missing_name_from_a_bad_file_stem_has_no_line() -> None:
    error = _error(BASE, "/pipes/bad name.yaml")
    assert (error.line, error.field) == (None, "name")
    assert str(error).startswith("/pipes/bad name.yaml: name: none given")


def test_load_pipeline_gives_text_and_digest(tmp_path: Path) -> None:
    path = tmp_path / "keepup.yaml"
    path.write_text(BASE, encoding="utf-8")
    loaded = load_pipeline(path)
    assert loaded.path == path
    assert loaded.text == BASE
    assert loaded.digest == hashlib.sha256(BASE.encode()).hexdigest()
    assert loaded.pipeline.name == "keepup"


def test_folder_loading_keeps_going_past_broken_files_and_rejects_a_second_name(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.yaml").write_text("name: keepup\n" + BASE, encoding="utf-8")
    (tmp_path / "b.yml").write_text("name: keepup\n" + BASE, encoding="utf-8")
    (tmp_path / "c.yaml").write_text(BASE.replace("[Physics]", "[Physics"), encoding="utf-8")
    (tmp_path / "d.yaml").write_bytes(b"streams: [\xff]\n")
    (tmp_path / "e.yaml").write_text("name: quick\n" + BASE, encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a pipeline", encoding="utf-8")
    (tmp_path / ".#e.yaml").write_text("editor lock", encoding="utf-8")
    loaded, errors = load_pipeline_folder(tmp_path)
    assert [(i.path.name, i.pipeline.name) for i in loaded] == [
        ("a.yaml", "keepup"),
        ("e.yaml", "quick"),
    ]
    assert [(Path(e.path).name, e.line, e.field) for e in errors] == [
        ("b.yml", 1, "name"),
        ("c.yaml", 2, ""),
        ("d.yaml", None, ""),
    ]
    assert f"{tmp_path / 'a.yaml'}" in errors[0].problem
    assert str(tmp_path / "b.yml") in str(errors[0])
    assert "not UTF-8" in errors[2].problem


def test_a_missing_folder_has_no_pipelines(tmp_path: Path) -> None:
    assert load_pipeline_folder(tmp_path / "absent") == ([], [])
