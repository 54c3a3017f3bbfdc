"""The scheduler's storage adapter: input trees, datum plans, indexes and results, merged outputs.

Plans and indexes are immutable and named by their content, so they cache without bound checks
beyond a size limit. Everything here is blocking: call it in a thread.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import msgspec

from hw_events.pps import DatumIndex, DatumPart, DatumPlan, DatumResults
from hw_scheduler import datums
from hw_storage import layers
from hw_storage.blobs import INDEXES, PLANS, RESULTS, BlobStore, content_key
from hw_storage.recent import Recent
from hw_storage.trees import TreeCache

_plan_decoder = msgspec.msgpack.Decoder(DatumPlan)
_index_decoder = msgspec.msgpack.Decoder(DatumIndex)
_results_decoder = msgspec.msgpack.Decoder(DatumResults)
_encoder = msgspec.msgpack.Encoder()


class JobBlobs:
    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.trees = TreeCache(store, max_views=32)
        # What was just saved is read again soon (the job's next steps, the next job's plan):
        # saving keeps it here, so it is not decoded again.
        self._plans: Recent[DatumPlan] = Recent(16)
        self._indexes: Recent[DatumIndex] = Recent(16)
        self._results: Recent[DatumResults] = Recent(4)  # `list datum` paging through one job
        self.plan_ids = functools.lru_cache(maxsize=64)(self._plan_ids)

    def input_parts(self, tree: tuple[str, ...], glob: str, index: int) -> list[DatumPart]:
        return datums.input_parts(self.trees.view(tree), glob, index)

    def _put(self, kind: str, value: object) -> str:
        data = _encoder.encode(value)
        key = content_key(kind, data)
        self.store.put(key, data)
        return key

    def save_plan(self, plan: DatumPlan) -> str:
        key = self._put(PLANS, plan)
        self._plans.keep(key, plan)
        return key

    def save_index(self, index: DatumIndex) -> str:
        key = self._put(INDEXES, index)
        self._indexes.keep(key, index)
        return key

    def save_results(self, results: DatumResults) -> str:
        return self._put(RESULTS, results)

    def results(self, key: str) -> DatumResults:
        return self._results.get(key, lambda: _results_decoder.decode(self.store.get(key)))

    def plan(self, key: str) -> DatumPlan:
        return self._plans.get(key, lambda: _plan_decoder.decode(self.store.get(key)))

    def index(self, key: str) -> DatumIndex:
        return self._indexes.get(key, lambda: _index_decoder.decode(self.store.get(key)))

    def _plan_ids(self, key: str) -> frozenset[str]:
        return frozenset(d.id for d in self.plan(key).datums)

    def merged_onto(
        self, base: Sequence[str], removed: Sequence[str], added: Sequence[tuple[str, str]]
    ) -> list[str]:
        """`datums.merge_onto` over layer keys: the previous tree, minus `removed` outputs, plus
        the `added` (datum, layer key) ones; stored as one layer (none when empty)."""
        merged = datums.merge_onto(
            [self.trees.layer(k) for k in base],
            [self.trees.layer(k) for k in removed if k],
            [(datum, self.trees.layer(key)) for datum, key in added if key],
        )
        return [layers.write(self.store, merged)] if merged.entries else []

    def merged_output(self, outputs: Sequence[tuple[str, str]]) -> tuple[list[str], int]:
        """The tree of a job's output (one layer, or none when empty) from (datum, layer key) pairs,
        and how many files it holds; `datums.OutputCollision` when two datums wrote one path."""
        read = [(datum, self.trees.layer(key)) for datum, key in outputs if key]
        merged = datums.merge(read)
        if not merged.entries:
            return [], 0
        return [layers.write(self.store, merged)], len(merged.entries)
