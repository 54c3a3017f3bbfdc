"""Pipeline specs as users write them: defaults filled in, and errors that name the field and why."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from hw_events.errors import UserError
from hw_events.pipeline_spec import input_name, parse_pipeline_spec, pfs_inputs

EDGES: dict[str, Any] = {
    "pipeline": {"name": "edges"},
    "description": "A pipeline that performs image edge detection by using the OpenCV library.",
    "transform": {"cmd": ["python3", "/edges.py"], "image": "pachyderm/opencv:1.0"},
    "input": {"pfs": {"repo": "images", "glob": "/*"}},
}


def spec_with(path: str, value: Any) -> dict[str, Any]:
    """EDGES with `value` at a dotted `path` (None removes it)."""
    doc = copy.deepcopy(EDGES)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return doc


def test_the_seeds_edges_spec_reads_with_pachyderms_defaults() -> None:
    spec = parse_pipeline_spec(EDGES)
    assert spec.name == "edges"
    assert spec.transform.image == "pachyderm/opencv:1.0"
    [pfs] = pfs_inputs(spec.input)
    assert (pfs.repo, pfs.branch, pfs.glob, input_name(pfs)) == ("images", "master", "/*", "images")
    assert (spec.output_branch, spec.datum_tries, spec.workers, spec.reprocess_spec) == (
        "master",
        3,
        1,
        "until_success",
    )


def test_a_full_spec_keeps_every_field() -> None:
    doc = {
        "pipeline": {"name": "montage"},
        "transform": {
            "cmd": ["sh"],
            "stdin": ["montage -shadow /pfs/images/* /pfs/out/montage.png"],
            "env": {"MODE": "fast"},
            "accept_return_code": [2],
            "err_cmd": ["true"],
        },
        "input": {
            "cross": [
                {"pfs": {"repo": "images", "glob": "/", "name": "pics"}},
                {
                    "union": [
                        {"pfs": {"repo": "a", "glob": "/*"}},
                        {"pfs": {"repo": "b", "glob": "/*", "name": "a"}},
                    ]
                },
            ]
        },
        "parallelism_spec": {"constant": 4},
        "output_branch": "out",
        "datum_tries": 1,
        "datum_timeout": "30s",
        "job_timeout": "1h",
        "resource_requests": {"cpu": 0.5, "memory": "1G", "gpu": {"type": "nvidia.com/gpu", "number": 1}},
        "reprocess_spec": "every_job",
    }
    spec = parse_pipeline_spec(doc)
    assert [input_name(p) for p in pfs_inputs(spec.input)] == ["pics", "a", "a"]  # union members may share
    assert spec.workers == 4
    assert spec.resource_requests is not None
    assert spec.resource_requests.gpu is not None
    assert spec.transform.accept_return_code == [2]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("pipeline", None, "pipeline is required"),
        ("pipeline.name", None, "pipeline.name is required"),
        ("transform.cmd", None, "transform.cmd is required"),
        ("input", None, "input is required"),
        ("input.pfs.glob", None, "input.pfs.glob is required"),
        ("transform.cmnd", ["x"], "transform.cmnd is not a pipeline spec field"),
        ("paralelism_spec", {"constant": 2}, "paralelism_spec is not a pipeline spec field"),
        ("transform.cmd", "python3 x.py", "transform.cmd: expected `array`, got `str`"),
        ("transform.cmd", [], "transform.cmd is empty"),
        ("pipeline.name", "my pipeline", 'pipeline.name "my pipeline" may hold only letters'),
        ("datum_tries", 0, "datum_tries must be at least 1, not 0"),
        ("parallelism_spec", {"constant": -1}, "parallelism_spec.constant must be 0 or more"),
        ("datum_timeout", "ten seconds", "datum_timeout:"),
        ("reprocess_spec", "always", 'reprocess_spec "always" is not one of until_success, every_job'),
        ("input.pfs.glob", "*", 'input.pfs.glob "*" must start with "/"'),
        ("input.pfs.name", "out", 'input.pfs.name "out" is where outputs go'),
        ("input.pfs.trigger", {"size": "1 elephant"}, 'input.pfs.trigger: invalid trigger size "1 elephant"'),
        ("input.pfs.trigger", {}, "input.pfs.trigger has no condition: give size, commits or cron"),
        (
            "input.cross",
            [{"pfs": {"repo": "x", "glob": "/"}}],
            "input needs exactly one of pfs, cross or union",
        ),
        ("input", {"cross": []}, "input.cross is empty"),
        ("input", {}, "input needs exactly one of pfs, cross or union"),
    ],
)
def test_a_bad_spec_names_the_field_and_why(path: str, value: Any, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)) as caught:
        parse_pipeline_spec(spec_with(path, value))
    assert caught.value.message.startswith("invalid pipeline spec")


def test_crossed_inputs_need_different_names() -> None:
    doc = spec_with(
        "input", {"cross": [{"pfs": {"repo": "x", "glob": "/*"}}, {"pfs": {"repo": "x", "glob": "/"}}]}
    )
    with pytest.raises(UserError, match=re.escape('input name "x" appears twice in input.cross')):
        parse_pipeline_spec(doc)


@pytest.mark.parametrize("document", [[EDGES], "edges", None])
def test_a_spec_must_be_an_object(document: Any) -> None:
    with pytest.raises(UserError, match="a pipeline spec is an object"):
        parse_pipeline_spec(document)


def test_an_input_trigger_follows_the_input_branch_unless_it_names_another() -> None:
    from hw_events.pipeline_spec import as_trigger, pfs_inputs

    own = parse_pipeline_spec(spec_with("input.pfs.trigger", {"commits": 2}))
    (pfs,) = pfs_inputs(own.input)
    assert as_trigger(pfs).branch == pfs.branch == "master"  # type: ignore[union-attr]
    other = parse_pipeline_spec(spec_with("input.pfs.trigger", {"commits": 2, "branch": "staging"}))
    assert as_trigger(pfs_inputs(other.input)[0]).branch == "staging"  # type: ignore[union-attr]
