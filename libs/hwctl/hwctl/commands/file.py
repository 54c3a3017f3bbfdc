"""hwctl put/get/list/glob/diff/inspect/copy/delete file.

Bytes go straight between this process and the object store: `put file` cuts files into chunks,
stores them and a layer describing them, then asks the fs service to record the layer; `get file`
asks where a file's chunks are and reads them. Nothing large crosses the bus.
"""

from __future__ import annotations

import os
import sys

from hw_events.errors import UserError
from hwctl import output, refs
from hwctl.client import Client

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator
    from typing import Any, BinaryIO


def _json(node: dict[str, Any]) -> dict[str, Any]:
    return {"path": node["path"], "type": node["type"], "size_bytes": node["size_bytes"]}


def _print_nodes(nodes: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        output.json_lines(_json(n) for n in nodes)
    else:
        output.table(
            ["NAME", "TYPE", "SIZE"],
            [
                [
                    n["path"] + ("/" if n["type"] == "dir" and n["path"] != "/" else ""),
                    n["type"],
                    output.human_size(n["size_bytes"]),
                ]
                for n in nodes
            ],
        )


# --- put ---------------------------------------------------------------------------------------------


def put_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="REPO@BRANCH:/PATH")
    p.add_argument(
        "-f",
        "--file",
        dest="source",
        default="",
        metavar="FILE|DIR|URL|-",
        help="what to put; - is stdin, and so is no -f when data is piped in",
    )
    p.add_argument("-r", "--recursive", action="store_true", help="put a directory's files")
    p.add_argument(
        "-a", "--append", action="store_true", help="append to the files instead of replacing them"
    )


def _opener(path: str) -> Callable[[], BinaryIO]:
    def open_it() -> BinaryIO:
        return open(path, "rb")

    return open_it


def _from_stdin(source: str, dest: str, recursive: bool) -> tuple[str, Callable[[], BinaryIO], int]:
    """Stdin as the one file to put: with `-f -`, or with no -f when data is piped in (as in
    `dd ... | hwctl put file repo@branch:/path`)."""
    from hw_storage import paths

    if not source and sys.stdin.isatty():
        raise UserError("nothing to put: name a file with -f FILE, or pipe the data in")
    if not dest:
        raise UserError("put file from stdin needs a path: repo@branch:/path")
    if recursive:
        raise UserError("-r puts a directory's files: name the directory with -f DIR, not stdin")
    if sys.stdin.isatty():
        print("reading the file from stdin (end it with Ctrl-D)", file=sys.stderr)
    return paths.normalize(dest), lambda: sys.stdin.buffer, -1


def _sources(
    source: str, dest: str, recursive: bool
) -> Iterator[tuple[str, Callable[[], BinaryIO] | str, int]]:
    """(path in the commit, a local file or how to open a stream, size or -1) for each file to put."""
    from hw_storage import paths

    if source in ("", "-"):
        yield _from_stdin(source, dest, recursive)
        return
    if source.startswith(("http://", "https://")):
        import urllib.parse
        import urllib.request

        name = os.path.basename(urllib.parse.urlparse(source).path) or "index"
        target = paths.normalize(dest) if dest and not dest.endswith("/") else paths.join(dest or "/", name)
        yield target, lambda: urllib.request.urlopen(source, timeout=60), -1  # noqa: S310 - the user's URL
        return
    if os.path.isdir(source):
        if not recursive:
            raise UserError(f'"{source}" is a directory: use -r to put its files')
        base = paths.normalize(dest or "/")
        for root, dirs, files in os.walk(source):
            dirs.sort()
            for name in sorted(files):
                local = os.path.join(root, name)
                relative = os.path.relpath(local, source).replace(os.sep, "/")
                yield paths.join(base, relative), local, os.path.getsize(local)
        return
    if not os.path.exists(source):
        raise UserError(f'cannot read "{source}": no such file or directory')
    target = (
        paths.normalize(dest)
        if dest and not dest.endswith("/")
        else paths.join(dest or "/", os.path.basename(source))
    )
    if not os.path.isfile(source):  # a pipe or device: read it as a stream
        yield target, _opener(source), -1
        return
    yield target, source, os.path.getsize(source)


def put(args: argparse.Namespace) -> int:
    from hw_storage.upload import Upload
    from hwctl.storage import open_storage

    target = refs.parse(args.target)
    files = list(_sources(args.source, target.path, args.recursive))  # checks every path before any upload
    total = sum(size for _, _, size in files) if all(size >= 0 for _, _, size in files) else None
    with (
        Client.connect(timeout=300) as hw,
        output.progress(total, label=f"{target.repo}@{target.ref}") as advance,
    ):
        upload = Upload(open_storage(), progress=advance)
        try:
            for path, source, _ in files:
                if isinstance(source, str):
                    upload.add_file(path, source, append=args.append)
                else:
                    with source() as stream:
                        upload.add(path, stream, append=args.append)
            done = upload.finish()
        except BaseException:
            upload.abort()
            raise
        hw.request(
            "fs",
            "modify_files",
            {
                "repo": target.repo,
                "ref": target.ref,
                "layer": done.layer,
                "files": done.files,
                "bytes": done.bytes,
            },
            retry=True,
        )
    return 0


# --- get -------------------------------------------------------------------------------------------


def get_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="REPO@REF:/PATH")
    p.add_argument(
        "-o", "--output", dest="output_file", metavar="FILE", help="write here instead of to stdout"
    )


def get(args: argparse.Namespace) -> int:
    import contextlib

    from hw_events.errors import InternalError
    from hw_storage.blobs import BlobDamaged, BlobNotFound
    from hw_storage.download import read_ranges
    from hw_storage.layers import ChunkRange
    from hwctl.storage import open_storage

    target = refs.parse(args.file, path=True)
    with Client.connect() as hw:
        content = hw.request("fs", "get_file", {"repo": target.repo, "ref": target.ref, "path": target.path})
    ranges = [ChunkRange(*c) for c in content["chunks"]]
    pieces = read_ranges(open_storage(), ranges)
    try:
        if args.output_file:
            # Into a temporary file renamed at the end: a failure never leaves half a file behind.
            partial = f"{args.output_file}.hwctl-partial"
            with open(partial, "wb") as out:
                for piece in pieces:
                    out.write(piece)
            os.replace(partial, args.output_file)
        else:
            for piece in pieces:
                sys.stdout.buffer.write(piece)
            sys.stdout.buffer.flush()
    except (BlobNotFound, BlobDamaged) as err:
        if args.output_file:
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{args.output_file}.hwctl-partial")
        what = "missing from" if isinstance(err, BlobNotFound) else "damaged in"
        raise InternalError(
            f"{target.path} in {target.repo}@{target.ref}: a chunk is {what} the object store ({err})"
        ) from None
    return 0


# --- listings ----------------------------------------------------------------------------------------


def list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="REPO@REF[:/DIR]")
    output.add_output_flag(p)


def list_(args: argparse.Namespace) -> int:
    target = refs.parse(args.dir)
    with Client.connect() as hw:
        nodes = hw.request(
            "fs", "list_files", {"repo": target.repo, "ref": target.ref, "path": target.path or "/"}
        )
    _print_nodes(nodes, args.output)
    return 0


def glob_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", metavar="REPO@REF:PATTERN")
    output.add_output_flag(p)


def glob(args: argparse.Namespace) -> int:
    target = refs.parse(args.pattern, path=True)
    with Client.connect() as hw:
        nodes = hw.request(
            "fs", "glob_files", {"repo": target.repo, "ref": target.ref, "pattern": target.path}
        )
    _print_nodes(nodes, args.output)
    return 0


def inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="REPO@REF:/PATH")
    output.add_output_flag(p)


def inspect(args: argparse.Namespace) -> int:
    target = refs.parse(args.file, path=True)
    with Client.connect() as hw:
        node = hw.request("fs", "inspect_file", {"repo": target.repo, "ref": target.ref, "path": target.path})
    if args.output == "json":
        output.json_lines([_json(node) | {"commit": node.get("commit", "")}])
    else:
        output.pairs(
            [
                ("Path", node["path"]),
                ("Type", node["type"]),
                ("Size", output.human_size(node["size_bytes"])),
                ("Commit", node.get("commit", "")),
            ]
        )
    return 0


def diff_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("new", metavar="REPO@REF[:/PATH]")
    p.add_argument("old", nargs="?", metavar="REPO@REF[:/PATH]", help="default: the new commit's parent")
    output.add_output_flag(p)


def diff(args: argparse.Namespace) -> int:
    new = refs.parse(args.new)
    old = refs.parse(args.old) if args.old else None
    fields = {"repo": new.repo, "ref": new.ref, "path": new.path or "/"}
    if old is not None:
        fields |= {"old_repo": old.repo, "old_ref": old.ref}
    with Client.connect() as hw:
        found = hw.request("fs", "diff_files", fields)
    if args.output == "json":
        output.json_lines(
            [_json(n) | {"side": "new"} for n in found["added"]]
            + [_json(n) | {"side": "old"} for n in found["removed"]]
        )
        return 0
    for title, side in (("New Files:", found["added"]), ("Old Files:", found["removed"])):
        print(title)
        _print_nodes(side, "table")
    return 0


# --- copy and delete ---------------------------------------------------------------------------------


def copy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="REPO@REF:/PATH")
    p.add_argument("dst", metavar="REPO@BRANCH:/PATH")
    p.add_argument("-a", "--append", action="store_true", help="append to files that exist")


def copy(args: argparse.Namespace) -> int:
    src, dst = refs.parse(args.src, path=True), refs.parse(args.dst, path=True)
    fields = {
        "src_repo": src.repo,
        "src_ref": src.ref,
        "src_path": src.path,
        "repo": dst.repo,
        "ref": dst.ref,
        "path": dst.path,
        "append": args.append,
    }
    with Client.connect(timeout=300) as hw:
        hw.request("fs", "copy_files", fields, retry=True)
    return 0


def delete_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="REPO@BRANCH:/PATH")


def delete(args: argparse.Namespace) -> int:
    target = refs.parse(args.file, path=True)
    with Client.connect() as hw:
        hw.request(
            "fs", "delete_files", {"repo": target.repo, "ref": target.ref, "path": target.path}, retry=True
        )
    return 0
