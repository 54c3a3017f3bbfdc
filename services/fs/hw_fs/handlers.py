"""The fs service's command handlers: bus messages in, storage reads and domain decisions, events out.

Writes follow one shape: find where the write goes (`write_target`), read what the object store
says about the resulting tree (in a thread), then decide and append; if the state moved in between
(`StalePlan` or a conflict), do it again on the new state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from hw_events import subjects
from hw_events.bus import Handler
from hw_events.errors import NotFound, UserError
from hw_events.fs import (
    BranchInfo,
    ChunkRef,
    CommitInfo,
    CopyFiles,
    CreateBranch,
    CreateRepo,
    DeleteBranch,
    DeleteFiles,
    DeleteRepo,
    DiffFiles,
    FileContent,
    FileDiff,
    FileInfo,
    FinishCommit,
    FinishOutputCommit,
    FireTriggers,
    GetFile,
    GlobFiles,
    InspectBranch,
    InspectCommit,
    InspectFile,
    InspectRepo,
    ListBranches,
    ListCommits,
    ListFiles,
    ListRepos,
    ModifyFiles,
    OpenOutputCommit,
    RepoInfo,
    StartCommit,
    WaitCommit,
    commit_id_for,
)
from hw_events.messages import Command, utcnow
from hw_events.projection import Projector
from hw_events.service import Runtime
from hw_fs import domain
from hw_fs.domain import FsState, StalePlan, Writes
from hw_fs.trees import Trees
from hw_storage import layers, paths
from hw_storage.config import open_store
from hw_storage.layers import APPEND, DELETE, PUT, Entry
from hw_storage.tree import Node, TreeView
from hw_storage.upload import write_layer

ATTEMPTS = 5
WAIT_AT_MOST = 60.0  # seconds one wait_commit request waits; clients ask again


def _subjects(writes: Writes) -> dict[str, list[Any]]:
    return {subjects.repo_events(repo): events for repo, events in writes.items()}


def _file_info(node: Node, commit: str) -> FileInfo:
    return FileInfo(path=node.path, type=node.type, size_bytes=node.size_bytes, commit=commit)


class FsHandlers:
    """One method per command; `table()` maps command types to them."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.fs = cast(Projector[FsState], rt.projector(domain.PROJECTION.name))
        self.trees = Trees(open_store())

    async def view(self, tree: tuple[str, ...]) -> TreeView:
        return await asyncio.to_thread(self.trees.view, tree)

    async def until_settled(self, attempt: Callable[[], Awaitable[int]]) -> int:
        """Run a plan-read-decide attempt again while the state moves underneath it."""
        for _ in range(ATTEMPTS):
            try:
                return await attempt()
            except StalePlan:
                continue
        raise StalePlan(f"the state kept moving; gave up after {ATTEMPTS} tries")

    # --- repos -------------------------------------------------------------------------------------

    async def create_repo(self, command: CreateRepo) -> RepoInfo:
        subject = subjects.repo_events(domain.check_name("repo", command.repo))
        now = utcnow()
        await self.rt.execute(
            self.fs, subject, command.id, lambda s: domain.decide_create_repo(s, command, now)
        )
        return domain.repo_info(self.fs.state, command.repo)

    async def delete_repo(self, command: DeleteRepo) -> None:
        subject = subjects.repo_events(domain.check_name("repo", command.repo))
        await self.rt.execute(self.fs, subject, command.id, lambda s: domain.decide_delete_repo(s, command))

    async def inspect_repo(self, query: InspectRepo) -> RepoInfo:
        return domain.repo_info(self.fs.state, query.repo)

    async def list_repos(self, _: ListRepos) -> list[RepoInfo]:
        return domain.list_repos(self.fs.state)

    # --- branches ----------------------------------------------------------------------------------

    async def create_branch(self, command: CreateBranch) -> BranchInfo:
        set_id, now = commit_id_for(command.id), utcnow()
        await self.rt.execute_across(
            self.fs, command.id, lambda s: _subjects(domain.decide_create_branch(s, command, set_id, now))
        )
        repo = domain.repo_of(self.fs.state, command.repo)
        return domain.branch_info(repo, domain.branch_of(repo, command.branch))

    async def delete_branch(self, command: DeleteBranch) -> None:
        await self.rt.execute_across(
            self.fs, command.id, lambda s: _subjects(domain.decide_delete_branch(s, command))
        )

    async def fire_triggers(self, command: FireTriggers) -> list[BranchInfo]:
        # Decided on the log up to `seen`: judge it on no older a state (this projector may lag).
        await self.fs.wait_for(command.seen)
        set_id, now = commit_id_for(command.id), utcnow()
        await self.rt.execute_across(
            self.fs, command.id, lambda s: _subjects(domain.decide_fire_triggers(s, command, set_id, now))
        )
        repo = domain.repo_of(self.fs.state, command.repo)
        return [
            domain.branch_info(repo, repo.branches[m.branch])
            for m in command.moves
            if m.branch in repo.branches
        ]

    async def inspect_branch(self, query: InspectBranch) -> BranchInfo:
        repo = domain.repo_of(self.fs.state, query.repo)
        return domain.branch_info(repo, domain.branch_of(repo, query.branch))

    async def list_branches(self, query: ListBranches) -> list[BranchInfo]:
        return domain.list_branches(self.fs.state, query.repo)

    # --- commits -----------------------------------------------------------------------------------

    def info(self, repo: str, commit_id: str) -> CommitInfo:
        r = domain.repo_of(self.fs.state, repo)
        return domain.commit_info(r, r.commits[commit_id])

    async def start_commit(self, command: StartCommit) -> CommitInfo:
        set_id, now = commit_id_for(command.id), utcnow()
        await self.rt.execute_across(
            self.fs, command.id, lambda s: _subjects(domain.decide_start_commit(s, command, set_id, now))
        )
        return self.info(command.repo, set_id)

    async def finish_commit(self, command: FinishCommit) -> CommitInfo:
        finished: list[str] = []

        async def attempt() -> int:
            if self.fs.seen(command.id) is not None:  # a retry: it is finished already
                return self.fs.applied
            commit = domain.finish_target(self.fs.state, command.repo, command.ref)
            summary = await asyncio.to_thread(self.trees.summarize, commit.layers)
            finished[:] = [commit.id]
            now = utcnow()
            return await self.rt.execute_across(
                self.fs,
                command.id,
                lambda s: _subjects(
                    domain.decide_finish_commit(
                        s, command, commit_id=commit.id, seen=commit.layers, summary=summary, now=now
                    )
                ),
            )

        await self.until_settled(attempt)
        commit_id = finished[0] if finished else domain.resolve(self.fs.state, command.repo, command.ref).id
        return self.info(command.repo, commit_id)

    async def finish_output_commit(self, command: FinishOutputCommit) -> CommitInfo:
        domain.output_commit(self.fs.state, command.repo, command.commit)
        summary = None
        if not command.error:
            summary = await asyncio.to_thread(self.trees.summarize, tuple(command.layers))
        now = utcnow()
        await self.rt.execute_across(
            self.fs,
            command.id,
            lambda s: _subjects(domain.decide_finish_output_commit(s, command, summary, now)),
        )
        return self.info(command.repo, command.commit)

    async def open_output_commit(self, command: OpenOutputCommit) -> BranchInfo:
        set_id, now = commit_id_for(command.id), utcnow()
        await self.rt.execute_across(
            self.fs,
            command.id,
            lambda s: _subjects(domain.decide_open_output_commit(s, command, set_id, now)),
        )
        repo = domain.repo_of(self.fs.state, command.repo)
        return domain.branch_info(repo, domain.branch_of(repo, command.branch))

    async def inspect_commit(self, query: InspectCommit) -> CommitInfo:
        commit = domain.resolve(self.fs.state, query.repo, query.ref)
        return self.info(query.repo, commit.id)

    async def list_commits(self, query: ListCommits) -> list[CommitInfo]:
        return domain.list_commits(self.fs.state, query.repo, query.branch, query.limit)

    async def wait_commit(self, query: WaitCommit) -> CommitInfo:
        commit = domain.resolve(self.fs.state, query.repo, query.ref)

        def finished(state: FsState) -> bool:
            repo = state.repos.get(query.repo)
            return (
                repo is None or commit.id not in repo.commits or repo.commits[commit.id].finished is not None
            )

        # Bounded, so a client re-asks (surviving a restart of this service) instead of holding a
        # request and a command slot for as long as a commit stays open.
        patience = min(query.timeout or WAIT_AT_MOST, WAIT_AT_MOST)
        await self.fs.wait_until(finished, patience, f"commit {commit.id} to finish")
        return self.info(query.repo, commit.id)

    # --- files -------------------------------------------------------------------------------------

    async def write(
        self,
        command_id: str,
        repo: str,
        ref: str,
        *,
        layer: str,
        counts: tuple[int, int],
        description: str = "",
    ) -> CommitInfo:
        """Record a stored layer in the open commit of `ref`, or as a new commit on branch `ref`.

        A retried request (`layer` may then be empty) is answered from what it did: the commit it
        made, or the open commit it wrote into."""
        set_id = commit_id_for(command_id)
        target: list[domain.WriteTarget] = []

        async def attempt() -> int:
            if self.fs.seen(command_id) is not None:
                return self.fs.applied
            plan = domain.write_target(self.fs.state, repo, ref)
            tree = (*plan.base_layers, layer)
            if plan.open_commit is None:
                summary = await asyncio.to_thread(self.trees.summarize, tree)
            else:  # checked now (a path cannot be file and directory); compacted when it finishes
                merged = await self.view(tree)
                summary = domain.Summary(tree, merged.size_bytes, merged.count)
            target[:] = [plan]
            now = utcnow()
            return await self.rt.execute_across(
                self.fs,
                command_id,
                lambda s: _subjects(
                    domain.decide_write(
                        s,
                        repo,
                        ref,
                        planned=plan,
                        layer=layer,
                        counts=counts,
                        summary=summary,
                        set_id=set_id,
                        description=description,
                        now=now,
                    )
                ),
            )

        await self.until_settled(attempt)
        r = domain.repo_of(self.fs.state, repo)
        if set_id in r.commits:
            return domain.commit_info(r, r.commits[set_id])
        if target and target[0].open_commit is not None:
            return domain.commit_info(r, r.commits[target[0].open_commit])
        # A retry into an open commit: the commit holding its layer, else (a retried copy or
        # delete, whose layer is not known here) what the ref names now.
        holder = next((c for c in r.commits.values() if layer and layer in c.layers), None)
        return domain.commit_info(r, holder or domain.resolve(self.fs.state, repo, ref))

    async def modify_files(self, command: ModifyFiles) -> CommitInfo:
        if not command.layer.startswith("layers/"):
            raise UserError(f'"{command.layer}" is not a layer key')
        if self.fs.seen(command.id) is None:  # a layer the client wrote: check it before it counts
            layers.validate(await asyncio.to_thread(self.trees.layer, command.layer))
        return await self.write(
            command.id,
            command.repo,
            command.ref,
            layer=command.layer,
            counts=(command.files, command.bytes),
            description=command.description,
        )

    async def copy_files(self, command: CopyFiles) -> CommitInfo:
        layer, count = "", 0
        if self.fs.seen(command.id) is None:  # (a retry skips the checks: its files may have moved since)
            source = domain.resolve(self.fs.state, command.src_repo, command.src_ref)
            src, dst = paths.normalize(command.src_path), paths.normalize(command.path)
            tree = await self.view(source.layers)
            if tree.node(src) is None:
                raise NotFound(f'file "{src}" not found in {command.src_repo}@{command.src_ref}')
            op = APPEND if command.append else PUT
            entries = [
                Entry(
                    dst if path == src else paths.join(dst, path[len(src) :] if src != "/" else path),
                    op,
                    r.size,
                    r.chunks,
                )
                for path, r in tree.walk(src)
            ]
            layer = (await asyncio.to_thread(write_layer, self.trees.store, entries)).layer
            count = len(entries)
        return await self.write(command.id, command.repo, command.ref, layer=layer, counts=(count, 0))

    async def delete_files(self, command: DeleteFiles) -> CommitInfo:
        layer = ""
        if self.fs.seen(command.id) is None:  # (a retry skips the checks: its file is gone by now)
            path = paths.normalize(command.path)
            plan = domain.write_target(self.fs.state, command.repo, command.ref)
            tree = await self.view(plan.base_layers)
            if tree.node(path) is None:
                raise NotFound(f'file "{path}" not found in {command.repo}@{command.ref}')
            layer = (await asyncio.to_thread(write_layer, self.trees.store, [Entry(path, DELETE)])).layer
        return await self.write(command.id, command.repo, command.ref, layer=layer, counts=(1, 0))

    async def node_at(self, repo: str, ref: str, path: str) -> tuple[domain.Commit, TreeView, Node]:
        commit = domain.resolve(self.fs.state, repo, ref)
        tree = await self.view(commit.layers)
        normal = paths.normalize(path)
        node = tree.node(normal)
        if node is None:
            raise NotFound(f'file "{normal}" not found in {repo}@{ref}')
        return commit, tree, node

    async def list_files(self, query: ListFiles) -> list[FileInfo]:
        commit, tree, node = await self.node_at(query.repo, query.ref, query.path)
        nodes = [node] if node.type == "file" else tree.children(node.path)
        return [_file_info(n, commit.id) for n in nodes]

    async def glob_files(self, query: GlobFiles) -> list[FileInfo]:
        commit = domain.resolve(self.fs.state, query.repo, query.ref)
        tree = await self.view(commit.layers)
        return [_file_info(n, commit.id) for n in tree.glob(query.pattern)]

    async def inspect_file(self, query: InspectFile) -> FileInfo:
        commit, _, node = await self.node_at(query.repo, query.ref, query.path)
        return _file_info(node, commit.id)

    async def get_file(self, query: GetFile) -> FileContent:
        commit, tree, node = await self.node_at(query.repo, query.ref, query.path)
        if node.type == "dir":
            raise UserError(f'"{node.path}" is a directory in {query.repo}@{query.ref}: get a file under it')
        record = tree.files[node.path]
        return FileContent(
            path=node.path,
            size_bytes=record.size,
            commit=commit.id,
            chunks=[ChunkRef(c.chunk, c.offset, c.length) for c in record.chunks],
        )

    async def diff_files(self, query: DiffFiles) -> FileDiff:
        new = domain.resolve(self.fs.state, query.repo, query.ref)
        old_repo = query.old_repo or query.repo
        if query.old_ref:
            old_layers = domain.resolve(self.fs.state, old_repo, query.old_ref).layers
        elif new.parent is not None:
            old_layers = domain.repo_of(self.fs.state, query.repo).commits[new.parent].layers
        else:
            old_layers = ()
        added, removed = (await self.view(new.layers)).changes_since(await self.view(old_layers))
        scope = paths.normalize(query.path)

        def inside(n: Node) -> bool:
            return scope in ("/", n.path) or paths.under(scope, n.path) or paths.under(n.path, scope)

        return FileDiff(
            added=[_file_info(n, new.id) for n in added if inside(n)],
            removed=[_file_info(n, "") for n in removed if inside(n)],
        )

    def table(self) -> Mapping[type[Command], Handler]:
        return {
            CreateRepo: self.create_repo,
            DeleteRepo: self.delete_repo,
            InspectRepo: self.inspect_repo,
            ListRepos: self.list_repos,
            CreateBranch: self.create_branch,
            DeleteBranch: self.delete_branch,
            FireTriggers: self.fire_triggers,
            InspectBranch: self.inspect_branch,
            ListBranches: self.list_branches,
            StartCommit: self.start_commit,
            FinishCommit: self.finish_commit,
            FinishOutputCommit: self.finish_output_commit,
            OpenOutputCommit: self.open_output_commit,
            InspectCommit: self.inspect_commit,
            ListCommits: self.list_commits,
            WaitCommit: self.wait_commit,
            ModifyFiles: self.modify_files,
            CopyFiles: self.copy_files,
            DeleteFiles: self.delete_files,
            ListFiles: self.list_files,
            GlobFiles: self.glob_files,
            InspectFile: self.inspect_file,
            GetFile: self.get_file,
            DiffFiles: self.diff_files,
        }


def setup(rt: Runtime) -> Mapping[type[Command], Handler]:
    return FsHandlers(rt).table()
