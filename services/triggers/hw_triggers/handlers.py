"""The triggers service's work: judge due triggers as the file store's log moves and as cron ticks
come, and ask the file store to move the branches whose conditions hold.

It takes no commands of its own (it answers health); it sends `FireTriggers` to fs. Each firing is
conditional on the branches still being where it was decided (fs refuses it otherwise), and its
id comes from the decision itself: a retry, or a second replica deciding the same, lands once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import cast

from hw_events import fs
from hw_events.bus import Handler
from hw_events.errors import ConcurrencyConflict, HeadwaterError, ServiceUnavailable, TransientError
from hw_events.messages import Command, utcnow
from hw_events.projection import Projector
from hw_events.service import Runtime
from hw_triggers import domain
from hw_triggers.domain import Move, TriggersState

RETRY_AFTER = 0.5  # seconds before asking fs again when it did not answer
LONGEST_SLEEP = 60.0  # seconds between looks at the clock when no cron tick is near
BUSY_LOG = 500  # events after which a pass starts even if more are pending


def firing_id(repo: str, moves: list[Move], moved_at: int) -> str:
    """The same decision on the same state gets the same id, wherever and however often it is made."""
    key = f"trigger:{repo}:{moved_at}:" + ";".join(f"{m.branch}={m.expected}>{m.head}" for m in moves)
    return fs.commit_id_for(key)


class Firing:
    """The loop that judges due triggers and fires them."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.fs = cast(Projector[TriggersState], rt.projector(domain.PROJECTION.name))
        self.judged: dict[tuple[str, str], int] = {}  # branch -> the cue it was last judged on
        self.ticked: dict[tuple[str, str], datetime] = {}  # branch -> when its last tick was judged
        self.log = rt.log.bind(component="firing")

    async def run(self) -> None:
        while not self.rt.stopping.is_set():
            mark = self.fs.state.clock  # before judging: news that lands meanwhile wakes the next pass
            try:
                settled = await self.judge_all()
            except TransientError as err:  # fs is not answering: keep the news, ask again shortly
                self.log.warning("fire_postponed", error=err.message)
                await self._sleep(RETRY_AFTER)
                continue
            except Exception:  # a bug must not silently end the firing for good: say so, go on
                self.log.exception("judging_failed")
                await self._sleep(RETRY_AFTER)
                continue
            if settled:
                await self._wait_for_news(mark)

    async def judge_all(self) -> bool:
        """Judge every due trigger once; False if a decision proved outdated (judge again at once)."""
        state, now = self.fs.state, utcnow()
        on_commits = domain.due_on_commits(state, self.judged)
        on_ticks = domain.due_on_ticks(state, self.ticked, now)
        settled = True
        for repo in sorted(on_commits.keys() | on_ticks.keys()):
            by_ticks = on_ticks.get(repo, [])
            names = list(dict.fromkeys(on_commits.get(repo, []) + by_ticks))
            view = state.repos.get(repo)
            if view is None:  # deleted while earlier repos were fired
                continue
            names = [n for n in names if n in view.branches and view.branches[n].trigger is not None]
            cues = {n: domain.cue(state, repo, view.branches[n]) for n in names}
            if not await self.fire(repo, names, now):
                settled = False
                continue
            for name in names:
                self.judged[(repo, name)] = cues[name]
                if name in by_ticks:
                    self.ticked[(repo, name)] = now
        return settled

    async def fire(self, repo: str, names: list[str], now: datetime) -> bool:
        """Fire what the triggers of `names` decide; False if fs found the decision outdated."""
        moves = domain.plan(self.fs.state.repos[repo], names, now)
        if not moves:
            return True
        branches = self.fs.state.repos[repo].branches
        moved_at = max(branches[m.branch].moved_at for m in moves)
        command = fs.FireTriggers(
            id=firing_id(repo, moves, moved_at),
            repo=repo,
            moves=[
                fs.TriggerMove(
                    branch=m.branch, head=m.head, expected=m.expected, trigger=branches[m.branch].trigger
                )
                for m in moves
            ],
            seen=self.fs.applied,
        )
        try:
            await self.rt.bus.request(fs.SERVICE, command)
        except ConcurrencyConflict as err:  # decided on old news: catch up with the log, judge again
            self.log.info("fire_outdated", repo=repo, reason=err.message)
            await self._catch_up()
            return False
        except HeadwaterError as err:
            if err.retryable:
                raise
            self.log.error("fire_refused", repo=repo, moves=[m._asdict() for m in moves], error=err.message)
            return True  # judged: asking again would be refused again
        self.log.info("triggers_fired", repo=repo, moves=[m._asdict() for m in moves])
        await self._catch_up()
        return True

    async def _catch_up(self) -> None:
        last = await self.rt.store.last_sequence(self.fs.stream.name, self.fs.subjects)
        await self.fs.wait_for(last)

    async def _wait_for_news(self, mark: int) -> None:
        """Until the log has moved past `mark` (and the projector holds no half of a batch) or a
        tick is due."""
        tick = domain.next_tick(self.fs.state, self.ticked)
        timeout = LONGEST_SLEEP
        if tick is not None:
            timeout = min(timeout, max(0.0, (tick - utcnow()).total_seconds()) + 0.001)
        projector = self.fs
        try:
            # Not in the middle of a batch, unless events keep coming so fast the log never rests.
            await projector.wait_until(
                lambda s: s.clock != mark and (projector.pending == 0 or s.clock - mark >= BUSY_LOG),
                timeout,
                "news from the file store",
            )
        except ServiceUnavailable:
            pass  # the timeout (a tick is due) or the service stopping: the loop looks again

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.rt.stopping.wait(), seconds)
        except TimeoutError:
            pass


def setup(rt: Runtime) -> Mapping[type[Command], Handler]:
    rt.background(Firing(rt).run)
    return {}
