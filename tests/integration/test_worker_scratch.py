"""A worker's `/pfs` folders, used again from datum to datum on a real (local) object store: the
next datum sees only its own inputs and an empty `out`, whatever the last one left behind."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from hw_events.pps import TaskInput
from hw_storage.local import LocalBlobStore
from hw_storage.upload import Upload
from hw_worker import supervisor
from hw_worker.pfs import Scratch, sweep_stale


def _tree(store: LocalBlobStore, tmp_path: Path, files: dict[str, str]) -> list[str]:
    upload = Upload(store)
    for path, text in files.items():
        local = tmp_path / "src" / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(text)
        upload.add_file(path, str(local))
    return [upload.finish().layer]


def _everything(folder: str) -> set[str]:
    found = set()
    for directory, dirs, files in os.walk(folder):
        found |= {os.path.relpath(os.path.join(directory, name), folder) for name in dirs + files}
    return found


def test_a_used_folder_comes_back_with_only_the_next_datums_inputs(tmp_path: Path) -> None:
    store = LocalBlobStore(str(tmp_path / "store"))
    layers = _tree(store, tmp_path, {"/a/1.txt": "one", "/b/2.txt": "two"})
    scratch = Scratch(store, str(tmp_path / "scratch"))

    def datum(path: str) -> list[TaskInput]:
        return [TaskInput(name="data", repo="data", branch="master", commit="c", path=path, layers=layers)]

    first, read = scratch.prepare(datum("/a"))
    assert read == 3
    assert _everything(first) == {"out", "data", "data/a", "data/a/1.txt"}
    # What user code may leave behind: outputs, files beside the inputs, `out` turned into a file.
    Path(first, "out", "result").write_text("x")
    Path(first, "stray").write_text("y")
    assert scratch.upload_out(first, release=True).files == 1
    second, _ = scratch.prepare(datum("/b"))
    assert second == first  # used again
    assert _everything(second) == {"out", "data", "data/b", "data/b/2.txt"}
    os.rmdir(os.path.join(second, "out"))
    Path(second, "out").write_text("not a folder")
    scratch.release(second)
    third, _ = scratch.prepare(datum("/a"))
    assert third == first
    assert _everything(third) == {"out", "data", "data/a", "data/a/1.txt"}
    assert Path(third, "data", "a", "1.txt").read_text() == "one"


def test_what_killed_processes_left_behind_is_swept_and_nothing_of_live_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scratch folders of worker processes, and lists of held tasks of worker services, that no
    longer run; those of processes still running stay."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    scratch = tmp_path / "scratch"
    for pid in (dead.pid, os.getpid()):
        (scratch / str(pid)).mkdir(parents=True)
    sweep_stale(str(scratch))
    assert sorted(p.name for p in scratch.iterdir()) == [str(os.getpid())]

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for pid in (dead.pid, os.getpid()):
        (tmp_path / f"{supervisor.HELD_PREFIX}{pid}-x1").mkdir()
    supervisor._sweep_held_lists()
    assert sorted(p.name for p in tmp_path.glob(f"{supervisor.HELD_PREFIX}*")) == [
        f"{supervisor.HELD_PREFIX}{os.getpid()}-x1"
    ]
