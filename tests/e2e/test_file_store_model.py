"""Random sequences of file-store operations agree with a small in-memory model, across restarts.

Each step goes through the Python client and the storage library (as `hwctl` does, without a
process per step); `restart_fs` SIGKILLs the fs service mid-sequence and brings it back.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from hw_events.errors import UserError
from hw_storage.download import read_ranges
from hw_storage.layers import ChunkRange
from hw_storage.upload import Upload
from hwctl import local
from hwctl.client import Client
from hwctl.home import Home
from hwctl.storage import open_storage

BRANCHES = st.sampled_from(["master", "dev", "side"])
PATHS = st.sampled_from(["/a", "/b", "/d", "/d/x", "/d/y", "/e/f/g"])
CONTENT = st.binary(max_size=40)

Files = dict[str, bytes]
DONE: Counter[str] = Counter()  # what the runs did, so the test can check it exercised something


def conflicts(files: Files, path: str) -> bool:
    """Would writing a file at `path` make a path both a file and a directory?"""
    return any(p.startswith(path + "/") or path.startswith(p + "/") for p in files if p != path)


def remove(files: Files, path: str) -> bool:
    gone = [p for p in files if p == path or p.startswith(path + "/")]
    for p in gone:
        del files[p]
    return bool(gone)


class FileStoreModel(RuleBasedStateMachine):
    def __init__(self, home: Home) -> None:
        super().__init__()
        self.home = home
        self.client = Client.connect(home, timeout=60)
        self.store = open_storage(home)
        self.repo = f"m{uuid.uuid4().hex[:8]}"
        self.client.request("fs", "create_repo", {"repo": self.repo})
        self.heads: dict[str, Files] = {}  # branch -> files of its head commit (if finished)
        self.open: dict[str, Files] = {}  # branch -> files of its open head commit
        self.restarts = 0

    def teardown(self) -> None:
        self.client.close()

    def files(self, branch: str) -> Files:
        return self.open[branch] if branch in self.open else self.heads[branch]

    def ask(self, command: str, fields: dict[str, Any]) -> Any:
        DONE[command] += 1
        return self.client.request("fs", command, {"repo": self.repo, **fields}, retry=True)

    @rule(branch=BRANCHES, path=PATHS, data=CONTENT, append=st.booleans())
    def put(self, branch: str, path: str, data: bytes, append: bool) -> None:
        current = dict(self.files(branch)) if branch in self.heads or branch in self.open else {}
        upload = Upload(self.store)
        upload.add(path, data, append=append)
        done = upload.finish()
        fields = {"ref": branch, "layer": done.layer, "files": done.files, "bytes": done.bytes}
        if conflicts(current, path):
            with pytest.raises(UserError, match=r"is a directory|is a file"):
                self.ask("modify_files", fields)
            return
        self.ask("modify_files", fields)
        current[path] = current.get(path, b"") + data if append else data
        if branch in self.open:
            self.open[branch] = current
        else:
            self.heads[branch] = current

    @rule(branch=BRANCHES, path=PATHS)
    def delete(self, branch: str, path: str) -> None:
        if branch not in self.heads and branch not in self.open:
            return
        current = dict(self.files(branch))
        if not remove(current, path):
            with pytest.raises(UserError, match="not found"):
                self.ask("delete_files", {"ref": branch, "path": path})
            return
        self.ask("delete_files", {"ref": branch, "path": path})
        if branch in self.open:
            self.open[branch] = current
        else:
            self.heads[branch] = current

    @rule(src=BRANCHES, dst=BRANCHES, src_path=PATHS, dst_path=PATHS)
    def copy(self, src: str, dst: str, src_path: str, dst_path: str) -> None:
        if src not in self.heads and src not in self.open:
            return
        source = self.files(src)
        copied = {
            (dst_path + p[len(src_path) :]): data
            for p, data in source.items()
            if p == src_path or p.startswith(src_path + "/")
        }
        fields = {"src_repo": self.repo, "src_ref": src, "src_path": src_path, "ref": dst, "path": dst_path}
        if not copied:
            with pytest.raises(UserError, match="not found"):
                self.ask("copy_files", fields)
            return
        current = dict(self.files(dst)) if dst in self.heads or dst in self.open else {}
        if any(conflicts({**current, **{k: b"" for k in copied if k != p}}, p) for p in copied):
            with pytest.raises(UserError, match=r"is a directory|is a file"):
                self.ask("copy_files", fields)
            return
        self.ask("copy_files", fields)
        current.update(copied)
        if dst in self.open:
            self.open[dst] = current
        else:
            self.heads[dst] = current

    @rule(branch=BRANCHES)
    def start(self, branch: str) -> None:
        if branch in self.open:
            with pytest.raises(UserError, match="already has an open commit"):
                self.ask("start_commit", {"branch": branch})
            return
        self.ask("start_commit", {"branch": branch})
        self.open[branch] = dict(self.heads.get(branch, {}))

    @rule(branch=BRANCHES)
    def finish(self, branch: str) -> None:
        if branch not in self.heads and branch not in self.open:
            return
        if branch not in self.open:
            with pytest.raises(UserError, match="already finished"):
                self.ask("finish_commit", {"ref": branch})
            return
        self.ask("finish_commit", {"ref": branch})
        self.heads[branch] = self.open.pop(branch)

    @rule(branch=BRANCHES)
    def create_branch(self, branch: str) -> None:
        if branch in self.heads or branch in self.open:
            return
        self.ask("create_branch", {"branch": branch})  # a new branch: an empty, finished commit
        self.heads[branch] = {}

    @precondition(lambda self: len([b for b in self.heads if b not in self.open]) >= 2)
    @rule(data=st.data())
    def move_head(self, data: st.DataObject) -> None:
        finished = sorted(b for b in self.heads if b not in self.open)
        branch = data.draw(st.sampled_from(finished))
        other = data.draw(st.sampled_from([b for b in finished if b != branch]))
        self.ask("create_branch", {"branch": branch, "head": other})
        self.heads[branch] = dict(self.heads[other])

    @precondition(lambda self: self.restarts < 2)
    @rule()
    def restart_fs(self) -> None:
        runtime: Any = self.home.load()
        os.kill(runtime.services["fs"], signal.SIGKILL)
        local.up(self.home, local.UpOptions(), lambda _: None)
        self.restarts += 1
        DONE["restart"] += 1

    @invariant()
    def agrees_with_the_model(self) -> None:
        for branch in set(self.heads) | set(self.open):
            nodes = self.client.request(
                "fs", "glob_files", {"repo": self.repo, "ref": branch, "pattern": "**"}
            )
            found = {}
            for node in nodes:
                if node["type"] == "file":
                    content = self.client.request(
                        "fs", "get_file", {"repo": self.repo, "ref": branch, "path": node["path"]}
                    )
                    ranges = [ChunkRange(*c) for c in content["chunks"]]
                    found[node["path"]] = b"".join(read_ranges(self.store, ranges))
            assert found == self.files(branch), branch
            DONE["checked"] += 1


def test_file_store_agrees_with_a_model_across_restarts(hw_home: Path) -> None:
    DONE.clear()
    home = Home(str(hw_home))
    local.up(home, local.UpOptions(), lambda _: None)
    run_state_machine_as_test(
        lambda: FileStoreModel(home),
        settings=settings(
            max_examples=12,
            stateful_step_count=25,
            deadline=None,
            derandomize=True,  # the same sequences in every run: CI stays repeatable
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    print(dict(DONE))
    assert DONE["restart"] >= 2
    assert DONE["checked"] >= 100
    operations = (
        "modify_files",
        "delete_files",
        "copy_files",
        "start_commit",
        "finish_commit",
        "create_branch",
    )
    assert min(DONE[c] for c in operations) >= 5
