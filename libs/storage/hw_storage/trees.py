"""Reading trees (lists of layers) from the object store, with caches.

Layers are immutable, so they cache forever (within a bound); a tree view is cached under the tuple
of layers it merges, and a view for `layers + [new]` starts from a copy of the cached view for
`layers` instead of reading everything again. Everything here is blocking: call it in a thread.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from hw_events.errors import UserError
from hw_storage import layers as layer_store
from hw_storage.blobs import BlobNotFound, BlobStore
from hw_storage.layers import Layer
from hw_storage.recent import Recent
from hw_storage.tree import TreeView


class TreeCache:
    def __init__(self, store: BlobStore, *, max_views: int = 16, max_layers: int = 512) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._layers: Recent[Layer] = Recent(max_layers)
        self._views: OrderedDict[tuple[str, ...], TreeView] = OrderedDict()
        self._max_views = max_views

    def layer(self, key: str) -> Layer:
        return self._layers.get(key, lambda: self._read(key))

    def _read(self, key: str) -> Layer:
        try:
            return layer_store.read(self.store, key)
        except BlobNotFound:
            raise UserError(
                f"layer {key} is not in the object store ({self.store.description}): "
                "was it uploaded to the storage this Headwater uses?"
            ) from None

    def view(self, tree: tuple[str, ...]) -> TreeView:
        """The files of a tree. The view is shared: read it, never change it."""
        with self._lock:
            if tree in self._views:
                self._views.move_to_end(tree)
                return self._views[tree]
            start = next((k for k in range(len(tree) - 1, 0, -1) if tree[:k] in self._views), 0)
            base = self._views[tree[:start]].copy() if start else TreeView()
        for key in tree[start:]:
            base.apply(self.layer(key))
        self.remember(tree, base)
        return base

    def remember(self, tree: tuple[str, ...], view: TreeView) -> None:
        with self._lock:
            self._views[tree] = view
            while len(self._views) > self._max_views:
                self._views.popitem(last=False)
