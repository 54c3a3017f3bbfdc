"""Pipeline specs: the fields users write (as with pachctl), their defaults, and the checks that
refuse a spec with an error naming the field and saying why.

`parse_pipeline_spec` takes the decoded JSON or YAML document (a dict) and returns a typed
`PipelineSpec` with defaults filled in. The scheduler owns pipelines; this module is shared so the
CLI and any other client read a spec exactly as the scheduler will.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from hw_events.errors import UserError
from hw_events.fs import Trigger
from hw_events.trigger_conditions import check_conditions, parse_duration

_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
REPROCESS_SPECS = ("until_success", "every_job")
DEFAULT_IMAGE = "ubuntu:20.04"


class _Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Spec parts refuse fields they do not know: a misspelt field must not be silently ignored."""


class PipelineName(_Strict, frozen=True, kw_only=True):
    name: str


class Transform(_Strict, frozen=True, kw_only=True):
    cmd: list[str]
    image: str = DEFAULT_IMAGE
    stdin: list[str] = msgspec.field(default_factory=list)  # lines fed to cmd
    env: dict[str, str] = msgspec.field(default_factory=dict)
    accept_return_code: list[int] = msgspec.field(default_factory=list)  # besides 0
    err_cmd: list[str] = msgspec.field(default_factory=list)  # decides FAILED or RECOVERED
    err_stdin: list[str] = msgspec.field(default_factory=list)


class InputTrigger(_Strict, frozen=True, kw_only=True):
    """`input.pfs.trigger`: the pipeline reads a branch that follows `branch` (the input's own
    branch when empty) on these conditions."""

    branch: str = ""
    size: str = ""
    commits: int = 0
    cron: str = ""
    all: bool = False


class PfsInput(_Strict, frozen=True, kw_only=True):
    repo: str
    glob: str
    branch: str = "master"
    name: str = ""  # mounted at /pfs/<name>; the repo's name when empty
    trigger: InputTrigger | None = None


class Input(_Strict, frozen=True, kw_only=True):
    """Exactly one of the three."""

    pfs: PfsInput | None = None
    cross: list[Input] | None = None
    union: list[Input] | None = None


class ParallelismSpec(_Strict, frozen=True, kw_only=True):
    constant: int = 0  # 0: one worker


class DatumSetSpec(_Strict, frozen=True, kw_only=True):
    number: int = 0  # datums per task; 0: sized by Headwater (see the README)


class Gpu(_Strict, frozen=True, kw_only=True):
    type: str = ""
    number: int = 0


class Resources(_Strict, frozen=True, kw_only=True):
    """Kept for Kubernetes; the embedded default does not enforce them."""

    cpu: float = 0
    memory: str = ""
    disk: str = ""
    gpu: Gpu | None = None


class PipelineSpec(_Strict, frozen=True, kw_only=True):
    pipeline: PipelineName
    transform: Transform
    input: Input
    description: str = ""
    parallelism_spec: ParallelismSpec = msgspec.field(default_factory=ParallelismSpec)
    datum_set_spec: DatumSetSpec = msgspec.field(default_factory=DatumSetSpec)
    output_branch: str = "master"
    datum_tries: int = 3  # attempts in all
    datum_timeout: str = ""  # a duration such as 30s or 10m; empty: none
    job_timeout: str = ""
    resource_requests: Resources | None = None
    resource_limits: Resources | None = None
    reprocess_spec: str = "until_success"

    @property
    def name(self) -> str:
        return self.pipeline.name

    @property
    def workers(self) -> int:
        return max(1, self.parallelism_spec.constant)


def input_name(pfs: PfsInput) -> str:
    return pfs.name or pfs.repo


def pfs_inputs(spec_input: Input) -> list[PfsInput]:
    """Every pfs input, in the order the spec lists them."""
    if spec_input.pfs is not None:
        return [spec_input.pfs]
    return [pfs for member in (spec_input.cross or spec_input.union or []) for pfs in pfs_inputs(member)]


def parse_pipeline_spec(document: Any) -> PipelineSpec:
    """A typed spec from a decoded JSON/YAML document, or a UserError naming the field and why."""
    if not isinstance(document, dict):
        raise UserError(
            f"a pipeline spec is an object with pipeline, transform and input, not {_kind(document)}"
        )
    try:
        spec = msgspec.convert(document, PipelineSpec)
    except msgspec.ValidationError as err:
        name = (
            document.get("pipeline", {}).get("name") if isinstance(document.get("pipeline"), dict) else None
        )
        raise UserError(f"invalid pipeline spec{_for(name)}: {_field_message(str(err))}") from None
    _check(spec)
    return spec


def _check(spec: PipelineSpec) -> None:
    where = _for(spec.pipeline.name)
    _check_name("pipeline.name", spec.pipeline.name, where)
    if not spec.transform.cmd:
        raise UserError(f"invalid pipeline spec{where}: transform.cmd is empty: give the command to run")
    _check_input(spec.input, "input", where)
    _check_name("output_branch", spec.output_branch, where)
    if spec.datum_tries < 1:
        raise UserError(
            f"invalid pipeline spec{where}: datum_tries must be at least 1, not {spec.datum_tries}"
        )
    if spec.parallelism_spec.constant < 0:
        raise UserError(
            f"invalid pipeline spec{where}: parallelism_spec.constant must be 0 or more, "
            f"not {spec.parallelism_spec.constant}"
        )
    if spec.datum_set_spec.number < 0:
        raise UserError(
            f"invalid pipeline spec{where}: datum_set_spec.number must be 0 or more, "
            f"not {spec.datum_set_spec.number}"
        )
    for field in ("datum_timeout", "job_timeout"):
        value = getattr(spec, field)
        if value:
            try:
                parse_duration(value)
            except ValueError as err:
                raise UserError(f"invalid pipeline spec{where}: {field}: {err}") from None
    if spec.reprocess_spec not in REPROCESS_SPECS:
        raise UserError(
            f'invalid pipeline spec{where}: reprocess_spec "{spec.reprocess_spec}" is not one of '
            f"{', '.join(REPROCESS_SPECS)}"
        )


def _check_input(spec_input: Input, path: str, where: str) -> None:
    given = [k for k in ("pfs", "cross", "union") if getattr(spec_input, k) is not None]
    if len(given) != 1:
        raise UserError(
            f"invalid pipeline spec{where}: {path} needs exactly one of pfs, cross or union"
            + (f" (it has {' and '.join(given)})" if given else "")
        )
    if spec_input.pfs is not None:
        pfs = spec_input.pfs
        _check_name(f"{path}.pfs.repo", pfs.repo, where)
        _check_name(f"{path}.pfs.branch", pfs.branch, where)
        if pfs.name:
            _check_name(f"{path}.pfs.name", pfs.name, where)
        if input_name(pfs) == "out":
            raise UserError(
                f'invalid pipeline spec{where}: {path}.pfs.name "out" is where outputs go; choose another'
            )
        if not pfs.glob.startswith("/"):
            raise UserError(f'invalid pipeline spec{where}: {path}.pfs.glob "{pfs.glob}" must start with "/"')
        if pfs.trigger is not None:
            _check_trigger(pfs.trigger, f"{path}.pfs.trigger", where)
        return
    members = spec_input.cross if spec_input.cross is not None else spec_input.union or []
    kind = given[0]
    if not members:
        raise UserError(f"invalid pipeline spec{where}: {path}.{kind} is empty")
    for i, member in enumerate(members):
        _check_input(member, f"{path}.{kind}[{i}]", where)
    if kind == "cross":  # each datum mounts every crossed input: their names must differ
        names = [n for m in members for n in {input_name(p) for p in pfs_inputs(m)}]
        twice = sorted({n for n in names if names.count(n) > 1})  # (within one union they may repeat)
        if twice:
            raise UserError(
                f'invalid pipeline spec{where}: input name "{twice[0]}" appears twice in {path}.cross; '
                "give one of them a different name"
            )


def _check_trigger(trigger: InputTrigger, path: str, where: str) -> None:
    if trigger.branch:
        _check_name(f"{path}.branch", trigger.branch, where)
    try:
        check_conditions(trigger.size, trigger.commits, trigger.cron)
    except UserError as err:
        raise UserError(f"invalid pipeline spec{where}: {path}: {err.message}") from None
    if not (trigger.size or trigger.commits or trigger.cron or trigger.all):
        raise UserError(
            f"invalid pipeline spec{where}: {path} has no condition: give size, commits or cron "
            "(or all: true to follow every commit)"
        )


def as_trigger(pfs: PfsInput) -> Trigger | None:
    """The branch trigger an input's trigger makes: it follows the trigger's branch, or the input's."""
    if pfs.trigger is None:
        return None
    t = pfs.trigger
    return Trigger(branch=t.branch or pfs.branch, size=t.size, commits=t.commits, cron=t.cron, all=t.all)


def _check_name(path: str, value: str, where: str) -> None:
    if not _NAME.match(value):
        raise UserError(
            f'invalid pipeline spec{where}: {path} "{value}" may hold only letters, digits, "_" and "-"'
        )


def _for(name: object) -> str:
    return f' for "{name}"' if isinstance(name, str) and name else ""


def _kind(value: object) -> str:
    return {list: "a list", str: "a string", type(None): "nothing"}.get(type(value), type(value).__name__)


def _field_message(error: str) -> str:
    """msgspec says `Object missing required field `cmd` - at `$.transform``; users write
    `transform.cmd`."""
    message, _, at = error.partition(" - at `")
    path = at.rstrip("`").removeprefix("$").lstrip(".")
    missing = re.match(r"Object missing required field `(.+)`", message)
    if missing:
        field = f"{path}.{missing[1]}" if path else missing[1]
        return f"{field} is required"
    unknown = re.match(r"Object contains unknown field `(.+)`", message)
    if unknown:
        field = f"{path}.{unknown[1]}" if path else unknown[1]
        return f"{field} is not a pipeline spec field"
    return f"{path}: {message[0].lower()}{message[1:]}" if path else message
