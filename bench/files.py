"""File storage: `hwctl put file` and `copy file` against plain copies of the same bytes.

Every run writes fresh random content, so deduplication cannot flatter a second run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.report import Result, median_of, progress
from tests.e2e.cli import HWCTL
from tests.infra import S3Endpoint

MIB = 1024 * 1024


def _random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        left = size
        while left:
            block = min(left, 64 * MIB)
            f.write(os.urandom(block))
            left -= block
    return path


def _timed(argv: list[str], env: dict[str, str], *, to_disk: bool = False) -> float:
    """Wall time of a command; `to_disk`: starting from a clean page cache and until its writes
    have reached the disk (so neither side pays for, or is helped by, the other's writeback)."""
    if to_disk:
        os.sync()
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    if to_disk:
        os.sync()
    return time.perf_counter() - start


@contextlib.contextmanager
def headwater(workdir: Path, **storage: str) -> Iterator[dict[str, str]]:
    """A Headwater of its own (`hwctl up` in a fresh HW_HOME), stopped afterwards."""
    env = {**os.environ, "HW_HOME": str(workdir / "home"), **storage}
    env.pop("HW_NATS_URL", None)
    subprocess.run([HWCTL, "up"], env=env, check=True, capture_output=True)
    try:
        subprocess.run([HWCTL, "create", "repo", "bench"], env=env, check=True)
        yield env
    finally:
        subprocess.run([HWCTL, "down"], env=env, check=True, capture_output=True)


def put_large_local(workdir: Path, *, size: int, runs: int) -> Result:
    ours, cp = [], []
    with headwater(workdir) as env:
        for run in range(runs):
            source = _random_file(workdir / "big.bin", size)
            cp.append(size / MIB / _timed(["cp", str(source), str(workdir / "copy.bin")], env, to_disk=True))
            argv = [HWCTL, "put", "file", f"bench@master:/big{run}", "-f", str(source)]
            ours.append(size / MIB / _timed(argv, env, to_disk=True))
            progress(
                f"  put {size // MIB} MiB run {run + 1}: hwctl {ours[-1]:,.0f} MB/s, cp {cp[-1]:,.0f} MB/s"
            )
            os.remove(workdir / "copy.bin")
            os.remove(source)
    return Result(
        f"put file of {size // MIB} MiB, local disk",
        median_of(ours),
        median_of(cp),
        "MB/s",
        "cp to the same disk, synced",
        ">= 0.50",
        lambda r: r.ratio >= 0.5,
    )


def put_large_s3(workdir: Path, s3: S3Endpoint, *, size: int, runs: int) -> Result:
    storage = {
        "HW_STORAGE": "s3",
        "HW_S3_ENDPOINT": s3.endpoint,
        "HW_S3_ACCESS_KEY": s3.access_key,
        "HW_S3_SECRET_KEY": s3.secret_key,
        "HW_S3_BUCKET": "hw-bench",
    }
    client = s3.client()
    ours, direct = [], []
    with headwater(workdir, **storage) as env:
        for run in range(runs):
            source = _random_file(workdir / "big.bin", size)
            start = time.perf_counter()
            client.fput_object("hw-bench", f"direct/{run}", str(source))
            direct.append(size / MIB / (time.perf_counter() - start))
            source = _random_file(workdir / "big.bin", size)  # fresh bytes: nothing to deduplicate
            ours.append(
                size / MIB / _timed([HWCTL, "put", "file", f"bench@master:/big{run}", "-f", str(source)], env)
            )
            progress(
                f"  put {size // MIB} MiB to S3 run {run + 1}: "
                f"hwctl {ours[-1]:,.1f} MB/s, fput_object {direct[-1]:,.1f} MB/s"
            )
            os.remove(source)
    return Result(
        f"put file of {size // MIB} MiB, S3 (weed)",
        median_of(ours),
        median_of(direct),
        "MB/s",
        "minio fput_object",
        ">= 0.80",
        lambda r: r.ratio >= 0.8,
    )


def _small_files(directory: Path, count: int, size: int) -> Path:
    for i in range(count):
        sub = directory / f"d{i % 100:02}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05}").write_bytes(os.urandom(size))
    return directory


def _python_copy_loop(source: Path, target: Path) -> None:
    for root, _, names in os.walk(source):
        out = target / Path(root).relative_to(source)
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                data = f.read()
            with open(out / name, "wb") as f:
                f.write(data)


def put_many_small(workdir: Path, *, count: int, runs: int) -> Result:
    ours, loop = [], []
    with headwater(workdir) as env:
        for run in range(runs):
            source = _small_files(workdir / f"small{run}", count, 4096)
            start = time.perf_counter()
            _python_copy_loop(source, workdir / "loop")
            loop.append(count / (time.perf_counter() - start))
            ours.append(
                count
                / _timed([HWCTL, "put", "file", "-r", f"bench@master:/small{run}", "-f", str(source)], env)
            )
            progress(
                f"  put {count:,} files of 4 KiB run {run + 1}: "
                f"hwctl {ours[-1]:,.0f}/s, python loop {loop[-1]:,.0f}/s"
            )
            shutil.rmtree(source)
            shutil.rmtree(workdir / "loop")
    return Result(
        f"put file -r of {count:,} files of 4 KiB",
        median_of(ours),
        median_of(loop),
        "files/s",
        "a Python copy loop",
        ">= 0.30 and >= 5,000 files/s",
        lambda r: r.ratio >= 0.3 and r.headwater >= 5000,
    )


def copy_directory(workdir: Path, *, count: int, runs: int) -> Result:
    """Copy time of a directory of `count` files, 64 KiB each vs 1 KiB each: references, not bytes."""
    with headwater(workdir) as env:
        for name, size in (("light", 1024), ("heavy", 64 * 1024)):
            source = _small_files(workdir / name, count, size)
            subprocess.run(
                [HWCTL, "put", "file", "-r", f"bench@master:/{name}", "-f", str(source)], env=env, check=True
            )
            shutil.rmtree(source)
        times: dict[str, list[float]] = {"light": [], "heavy": []}
        for run in range(runs):
            for name, samples in times.items():
                argv = [HWCTL, "copy", "file", f"bench@master:/{name}", f"bench@copies:/{name}{run}"]
                samples.append(_timed(argv, env))
            light, heavy = times["light"][-1], times["heavy"][-1]
            progress(
                f"  copy {count:,} files run {run + 1}: 1 KiB each {light:.2f} s, 64 KiB each {heavy:.2f} s"
            )
    return Result(
        f"copy file of {count:,} files: 64x the bytes",
        median_of(times["heavy"]),
        median_of(times["light"]),
        "s",
        "the same with 1 KiB files",
        "<= 1.5 (time does not grow with bytes)",
        lambda r: r.ratio <= 1.5,
    )


def run_all(s3: S3Endpoint, *, quick: bool) -> list[Result]:
    scale = 16 if quick else 1
    results = []
    with tempfile.TemporaryDirectory(prefix="hw-bench-files-") as tmp:
        work = Path(tmp)
        for name, bench in (
            ("local", lambda d: put_large_local(d, size=1024 * MIB // scale, runs=3)),
            ("s3", lambda d: put_large_s3(d, s3, size=1024 * MIB // scale, runs=1)),
            ("small", lambda d: put_many_small(d, count=10_000 // (scale // 4 or 1), runs=3)),
            ("copy", lambda d: copy_directory(d, count=10_000 // (scale // 4 or 1), runs=3)),
        ):
            (work / name).mkdir()
            results.append(bench(work / name))
    return results
