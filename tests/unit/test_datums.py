"""Cutting inputs into datums, skipping unchanged ones, and merging outputs (the scheduler's pure part)."""

from __future__ import annotations

import pytest

from hw_events.pipeline_spec import Input, PfsInput
from hw_events.pps import DATUM_FAILED, DATUM_RECOVERED, DATUM_SUCCESS, DatumIndex, IndexedDatum, JobInput
from hw_scheduler import datums
from hw_storage.layers import PUT, ChunkRange, Entry, Layer
from hw_storage.tree import TreeView


def tree(files: dict[str, str]) -> TreeView:
    """A tree whose files have the given contents (the content stands in for its hash)."""
    entries = tuple(
        Entry(
            path,
            PUT,
            len(text),
            (ChunkRange("chunks/" + "0" * 64, 0, len(text)),),
            text.encode().hex().ljust(64, "0")[:64],
        )
        for path, text in sorted(files.items())
    )
    return TreeView.of([Layer(entries=entries)])


def pfs(repo: str, glob: str, name: str = "") -> Input:
    return Input(pfs=PfsInput(repo=repo, glob=glob, name=name))


def job_inputs(*repos: str) -> list[JobInput]:
    return [JobInput(name=r, repo=r, branch="master", commit="c" * 32) for r in repos]


FILES = {"/a.txt": "a", "/dir/b.txt": "b", "/dir/sub/c.txt": "c", "/dir/sub/d.txt": "d"}


def paths_of(planned: list[datums.PlannedDatum]) -> list[list[str]]:
    return [[p.path for p in d.parts] for d in planned]


@pytest.mark.parametrize(
    ("glob", "expected"),
    [
        ("/", [["/"]]),
        ("/*", [["/a.txt"], ["/dir"]]),
        ("/*/*", [["/dir/b.txt"], ["/dir/sub"]]),
        ("/**", [["/a.txt"], ["/dir"], ["/dir/b.txt"], ["/dir/sub"], ["/dir/sub/c.txt"], ["/dir/sub/d.txt"]]),
        ("/dir/sub/*", [["/dir/sub/c.txt"], ["/dir/sub/d.txt"]]),
    ],
)
def test_a_glob_cuts_the_input_into_one_datum_per_match(glob: str, expected: list[list[str]]) -> None:
    parts = {0: datums.input_parts(tree(FILES), glob, 0)}
    planned = datums.plan(pfs("data", glob), job_inputs("data"), parts, salt="s", base=None)
    assert paths_of(planned) == expected


def test_a_directory_datum_holds_every_file_under_it() -> None:
    (part,) = [p for p in datums.input_parts(tree(FILES), "/*", 0) if p.path == "/dir"]
    assert [f.path for f in part.files] == ["/dir/b.txt", "/dir/sub/c.txt", "/dir/sub/d.txt"]


def test_an_empty_commit_has_no_datums_even_for_the_root_glob() -> None:
    assert datums.input_parts(TreeView(), "/", 0) == []


def test_cross_is_the_product_and_union_the_concatenation() -> None:
    left, right = tree({"/1": "1", "/2": "2"}), tree({"/x": "x", "/y": "y", "/z": "z"})
    parts = {0: datums.input_parts(left, "/*", 0), 1: datums.input_parts(right, "/*", 1)}
    inputs = job_inputs("left", "right")
    crossed = datums.plan(
        Input(cross=[pfs("left", "/*"), pfs("right", "/*")]), inputs, parts, salt="", base=None
    )
    assert paths_of(crossed) == [[a, b] for a in ("/1", "/2") for b in ("/x", "/y", "/z")]
    joined = datums.plan(
        Input(union=[pfs("left", "/*"), pfs("right", "/*")]), inputs, parts, salt="", base=None
    )
    assert paths_of(joined) == [["/1"], ["/2"], ["/x"], ["/y"], ["/z"]]
    assert len({d.id for d in joined}) == 5  # the same path in two inputs is two datums


def test_a_datum_id_names_what_it_reads_and_its_hash_adds_content_and_salt() -> None:
    inputs = job_inputs("data")

    def only(files: dict[str, str], salt: str = "s") -> datums.PlannedDatum:
        (planned,) = datums.plan(
            pfs("data", "/"), inputs, {0: datums.input_parts(tree(files), "/", 0)}, salt=salt, base=None
        )
        return planned

    first = only({"/a": "1"})
    changed = only({"/a": "2"})
    assert changed.id == first.id
    assert changed.hash != first.hash
    assert only({"/a": "1"}, salt="t").hash != first.hash
    assert only({"/a": "1"}).hash == first.hash
    renamed = job_inputs("data")[0]
    other_name = [JobInput(name="other", repo=renamed.repo, branch="master", commit=renamed.commit)]
    (elsewhere,) = datums.plan(
        pfs("data", "/", "other"),
        other_name,
        {0: datums.input_parts(tree({"/a": "1"}), "/", 0)},
        salt="s",
        base=None,
    )
    assert elsewhere.id != first.id


def test_only_datums_processed_successfully_with_the_same_hash_are_skipped() -> None:
    inputs = job_inputs("data")
    files = {"/same": "1", "/changed": "2", "/failed": "3", "/recovered": "4", "/new": "5"}
    parts = {0: datums.input_parts(tree(files), "/*", 0)}
    first = {p.parts[0].path: p for p in datums.plan(pfs("data", "/*"), inputs, parts, salt="s", base=None)}
    base = DatumIndex(
        {
            first["/same"].id: IndexedDatum(first["/same"].hash, DATUM_SUCCESS, "layers/x"),
            first["/changed"].id: IndexedDatum("an older hash", DATUM_SUCCESS, "layers/y"),
            first["/failed"].id: IndexedDatum(first["/failed"].hash, DATUM_FAILED, ""),
            first["/recovered"].id: IndexedDatum(first["/recovered"].hash, DATUM_RECOVERED, ""),
        }
    )
    planned = datums.plan(pfs("data", "/*"), inputs, parts, salt="s", base=base)
    assert {d.parts[0].path for d in planned if d.skip} == {"/same"}
    every_job = datums.plan(pfs("data", "/*"), inputs, parts, salt="s", base=base, reprocess_every_job=True)
    assert not any(d.skip for d in every_job)
    new_salt = datums.plan(pfs("data", "/*"), inputs, parts, salt="t", base=base)
    assert not any(d.skip for d in new_salt)


def test_datums_an_earlier_running_job_also_runs_wait_and_are_skipped_once_it_ended_well() -> None:
    inputs = job_inputs("data")
    glob = pfs("data", "/*")
    before = {"/same": "1", "/changed": "2", "/failing": "3"}
    earlier = datums.plan(glob, inputs, {0: datums.input_parts(tree(before), "/*", 0)}, salt="s", base=None)
    now = {"/same": "1", "/changed": "2 changed", "/failing": "3", "/new": "4"}
    parts = {0: datums.input_parts(tree(now), "/*", 0)}
    running = {d.id: d.hash for d in earlier}
    planned = datums.plan(glob, inputs, parts, salt="s", base=None, running=running)
    by_path = {d.parts[0].path: d for d in planned}
    # Only the same inputs as the running job's wait; what changed or is new runs at once.
    assert {p for p, d in by_path.items() if d.wait} == {"/same", "/failing"}
    assert not any(d.skip for d in planned)
    # That job ended: its index says which waiting datums it processed well.
    ids = {d.parts[0].path: d.id for d in earlier}
    hashes = {d.parts[0].path: d.hash for d in earlier}
    index = DatumIndex(
        {
            ids["/same"]: IndexedDatum(hashes["/same"], DATUM_SUCCESS, "layers/same"),
            ids["/changed"]: IndexedDatum(hashes["/changed"], DATUM_SUCCESS, "layers/changed"),
            ids["/failing"]: IndexedDatum(hashes["/failing"], DATUM_FAILED, ""),
        }
    )
    rebased, dropped = datums.rebase(planned, index)
    by_path = {d.parts[0].path: d for d in rebased}
    assert ({p for p, d in by_path.items() if d.skip}, dropped) == ({"/same"}, [])
    assert {p for p, d in by_path.items() if d.wait} == {"/same", "/failing"}  # which waited stays known
    # It failed (no base), or the pipeline reprocesses every job: every waiting datum runs.
    assert not any(d.skip for d in datums.rebase(planned, None)[0])
    # It failed, and the older base had /changed as it is now: as in order, that is skipped too,
    # though it ran at once; its result is set aside.
    older = DatumIndex(
        {by_path["/changed"].id: IndexedDatum(by_path["/changed"].hash, DATUM_SUCCESS, "layers/c")}
    )
    rebased, dropped = datums.rebase(planned, older)
    assert [d.parts[0].path for d in rebased if d.skip] == ["/changed"]
    assert dropped == [by_path["/changed"].id]
    every_job = datums.plan(
        glob, inputs, parts, salt="s", base=None, running=running, reprocess_every_job=True
    )
    assert not any(d.wait for d in every_job)


def layer(*paths: str) -> Layer:
    return Layer(entries=tuple(Entry(p, PUT, 0, ()) for p in sorted(paths)))


def test_outputs_merge_into_one_layer() -> None:
    merged = datums.merge([("d1", layer("/a", "/x/1")), ("d2", layer("/b", "/x/2"))])
    assert [e.path for e in merged.entries] == ["/a", "/b", "/x/1", "/x/2"]


def test_two_datums_writing_one_path_name_the_path_and_both_datums() -> None:
    with pytest.raises(datums.OutputCollision) as err:
        datums.merge([("d1", layer("/same")), ("d2", layer("/other")), ("d3", layer("/same"))])
    assert str(err.value) == "duplicate path output by different datums (/same from d1 and /same from d3)"


def test_a_file_where_another_datum_wrote_a_directory_is_a_collision() -> None:
    with pytest.raises(datums.OutputCollision, match=r"file / directory path collision \(/x"):
        datums.merge([("d1", layer("/x/inside")), ("d2", layer("/x"))])
    with pytest.raises(datums.OutputCollision, match=r"file / directory path collision \(/x"):
        datums.merge([("d1", layer("/x")), ("d2", layer("/x/inside"))])


def test_merging_onto_the_last_output_equals_merging_everything_again() -> None:
    before = {"d1": layer("/a", "/x/1"), "d2": layer("/b"), "d3": layer("/c", "/x/3")}
    base = datums.merge(list(before.items()))
    # d2 changed (now writes /b2), d3 vanished, d4 is new; d1 is kept
    now = {"d1": before["d1"], "d2": layer("/b2"), "d4": layer("/x/4")}
    onto = datums.merge_onto([base], [before["d2"], before["d3"]], [("d2", now["d2"]), ("d4", now["d4"])])
    assert onto == datums.merge(list(now.items()))


def test_merging_onto_refuses_a_new_output_meeting_a_kept_one() -> None:
    base = datums.merge([("d1", layer("/kept", "/dir/f"))])
    with pytest.raises(datums.OutputCollision, match="/kept from d2 meets an output kept from before"):
        datums.merge_onto([base], [], [("d2", layer("/kept"))])
    with pytest.raises(datums.OutputCollision, match="/dir from d2"):
        datums.merge_onto([base], [], [("d2", layer("/dir"))])
    with pytest.raises(datums.OutputCollision, match="/kept/under from d2 is under a file"):
        datums.merge_onto([base], [], [("d2", layer("/kept/under"))])
