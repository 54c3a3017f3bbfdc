"""A worker process that takes one task and never finishes it (the test SIGKILLs it).

python -m tests.integration.stuck_worker NATS_URL SUBJECT DURABLE ACK_WAIT MAX_ATTEMPTS [HELD]

With HELD, it lists the tasks it holds in that file (`HeldTasks`), as a worker process does.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import nats

from hw_events.workqueue import HeldTasks, QueueSpec, Task, WorkQueue


async def main(
    url: str, subject: str, durable: str, ack_wait: float, max_attempts: int, *, held: str
) -> None:
    nc = await nats.connect(url)
    queue = WorkQueue(
        nc, QueueSpec(subject=subject, durable=durable, ack_wait=ack_wait, max_attempts=max_attempts)
    )

    async def hang(task: Task) -> None:
        print(f"took attempt {task.attempt}", flush=True)
        await asyncio.sleep(3600)

    await queue.run(hang, stop=asyncio.Event(), held=HeldTasks(Path(held)) if held else None)


if __name__ == "__main__":
    url, subject, durable, ack_wait, attempts = sys.argv[1:6]
    asyncio.run(main(url, subject, durable, float(ack_wait), int(attempts), held="".join(sys.argv[6:7])))
