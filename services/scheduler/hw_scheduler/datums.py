"""Cutting a job's input into datums, deciding which to skip, and merging their outputs. Pure: the
trees come in as `TreeView`s and the outputs as `Layer`s, read by the handlers.

- A pfs input gives one datum part per glob match (a file or a directory) with the files under it;
  `cross` is the product of its members' datums, `union` their concatenation.
- A datum's id names what it reads (input name, repo, branch and path of each part), never the
  content: the same path in the next commit is the same datum. Its hash adds the content of every
  file and the pipeline's salt: an unchanged hash means the earlier output can be kept.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence

import msgspec

from hw_events.pipeline_spec import Input
from hw_events.pps import (
    DATUM_SUCCESS,
    DatumFile,
    DatumIndex,
    DatumPart,
    JobInput,
    PlannedDatum,
)
from hw_storage import paths
from hw_storage.layers import DELETE, Entry, Layer
from hw_storage.tree import FileRecord, TreeView


class OutputCollision(Exception):
    """Two datums wrote the same output path (or one a file where another a directory)."""


def _digest(*fields: str) -> str:
    # Each field followed by its length, so ("ab", "c") and ("a", "bc") differ; hashed in one
    # call (twice a datum, a hundred thousand datums a job: the calls add up).
    joined: list[bytes] = []
    for field in fields:
        data = field.encode()
        joined += (data, len(data).to_bytes(8, "little"))
    return hashlib.blake2b(b"".join(joined), digest_size=32).hexdigest()


def file_digest(record: FileRecord) -> str:
    """The file's content hash, or (after an append, when none is kept) its chunk ranges'."""
    if record.hash:
        return record.hash
    return _digest(*(f"{c.chunk}:{c.offset}:{c.length}" for c in record.chunks))


def input_parts(view: TreeView, glob: str, index: int) -> list[DatumPart]:
    """One part per glob match that holds files, in path order."""
    parts = []
    for node in view.glob(glob):
        if node.type == "file":  # (most globs match files: no walk needed)
            files = [DatumFile(node.path, file_digest(view.files[node.path]))]
        else:
            files = [DatumFile(path, file_digest(record)) for path, record in view.walk(node.path)]
        if files:  # the root of an empty commit matches "/" but holds nothing to process
            parts.append(DatumPart(index, node.path, files))
    return parts


def _combinations(
    spec: Input, parts: Mapping[int, list[DatumPart]], start: int
) -> tuple[list[list[DatumPart]], int]:
    """The datums (lists of parts) of `spec`, whose first pfs input has index `start`."""
    if spec.pfs is not None:
        return [[part] for part in parts[start]], start + 1
    members = spec.cross if spec.cross is not None else spec.union or []
    groups: list[list[list[DatumPart]]] = []
    for member in members:
        datums, start = _combinations(member, parts, start)
        groups.append(datums)
    if spec.cross is not None:
        return [[p for datum in combo for p in datum] for combo in itertools.product(*groups)], start
    return [datum for group in groups for datum in group], start


def datum_id(inputs: Sequence[JobInput], parts: Sequence[DatumPart]) -> str:
    fields: list[str] = []
    for part in parts:
        given = inputs[part.input]
        fields += [given.name, given.repo, given.branch, part.path]
    return _digest(*fields)


def datum_hash(datum: str, parts: Sequence[DatumPart], salt: str) -> str:
    return _digest(datum, *(f"{f.path}\0{f.hash}" for part in parts for f in part.files), salt)


def plan(
    spec: Input,
    inputs: Sequence[JobInput],
    parts: Mapping[int, list[DatumPart]],
    *,
    salt: str,
    base: DatumIndex | None,
    reprocess_every_job: bool = False,
    running: Mapping[str, str] | None = None,
) -> list[PlannedDatum]:
    """Every datum of the job; `skip` where the base job processed the same inputs successfully.

    Failed and recovered datums are never skipped; with `every_job`, nothing is. With `running`
    (datum id -> hash of an earlier job that has not ended), a datum with the same id and hash
    `wait`s: whether it is skipped depends on how that job ends (see `rebase`).
    """
    combos, _ = _combinations(spec, parts, 0)
    planned: dict[str, PlannedDatum] = {}
    for combo in combos:
        ident = datum_id(inputs, combo)
        if ident in planned:  # a union of two inputs matching the same path: one datum
            continue
        digest = datum_hash(ident, combo, salt)
        before = base.datums.get(ident) if base is not None else None
        skip = (
            not reprocess_every_job
            and before is not None
            and before.state == DATUM_SUCCESS
            and before.hash == digest
        )
        wait = not reprocess_every_job and running is not None and running.get(ident) == digest
        planned[ident] = PlannedDatum(ident, digest, combo, skip and not wait, wait)
    return list(planned.values())


def rebase(planned: Sequence[PlannedDatum], base: DatumIndex | None) -> tuple[list[PlannedDatum], list[str]]:
    """The plan once the earlier jobs have ended, and the datums that ran at once but need not
    have: every datum `base` (the newest successful job now) processed successfully with the
    same hash is skipped, as it would have been had the jobs run in order. Those that waited
    mostly; one that ran at once only when an earlier job failed and left an older base that
    had it (its result is set aside: after an update its output could differ)."""
    out, dropped = [], []
    for datum in planned:
        before = base.datums.get(datum.id) if base is not None else None
        if before is None or before.state != DATUM_SUCCESS or before.hash != datum.hash:
            out.append(datum)
            continue
        out.append(msgspec.structs.replace(datum, skip=True))
        if not datum.wait:
            dropped.append(datum.id)
    return out, dropped


def merge(outputs: Sequence[tuple[str, Layer]]) -> Layer:
    """One layer holding every datum's output; `OutputCollision` names a path two datums wrote."""
    owner: dict[str, str] = {}  # file path -> datum
    dirs: dict[str, str] = {}  # directory -> a datum with a file under it
    entries: list[Entry] = []
    for datum, layer in outputs:
        for entry in layer.entries:
            if entry.op == DELETE:
                continue
            path = entry.path
            if path in owner:
                raise OutputCollision(
                    f"duplicate path output by different datums ({path} from {owner[path]} and "
                    f"{path} from {datum})"
                )
            if path in dirs:
                raise OutputCollision(
                    f"file / directory path collision ({path}: datums {dirs[path]} and {datum})"
                )
            for directory in paths.ancestors(path):
                if directory in owner:
                    raise OutputCollision(
                        f"file / directory path collision ({directory}: "
                        f"datums {owner[directory]} and {datum})"
                    )
                dirs.setdefault(directory, datum)
            owner[path] = datum
            entries.append(entry)
    entries.sort(key=lambda e: e.path)
    return Layer(entries=tuple(entries))


def merge_onto(base: Sequence[Layer], removed: Sequence[Layer], added: Sequence[tuple[str, Layer]]) -> Layer:
    """The previous job's merged output, minus what the datums no longer kept had written, plus
    the new datums' outputs: the same as `merge` over every datum, reading only what changed.
    `OutputCollision` (without the other datum's name) when a new output meets a kept one."""
    kept: dict[str, Entry] = {}
    for layer in base:
        for entry in layer.entries:
            if entry.op != DELETE:
                kept[entry.path] = entry
    for layer in removed:
        for entry in layer.entries:
            kept.pop(entry.path, None)
    dirs = {d for path in kept for d in paths.ancestors(path)}
    for datum, layer in added:
        for entry in layer.entries:
            if entry.op != DELETE and (entry.path in kept or entry.path in dirs):
                raise OutputCollision(f"{entry.path} from {datum} meets an output kept from before")
            if entry.op != DELETE and any(d in kept for d in paths.ancestors(entry.path)):
                raise OutputCollision(f"{entry.path} from {datum} is under a file kept from before")
    fresh = merge(added)  # the new outputs among themselves
    entries = sorted([*kept.values(), *fresh.entries], key=lambda e: e.path)
    return Layer(entries=tuple(entries))
