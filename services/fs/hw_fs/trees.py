"""The fs service's storage adapter: trees read through the shared cache, and summed up (and
compacted) when a commit finishes. Blocking: call it in a thread."""

from __future__ import annotations

from hw_fs.domain import Summary
from hw_storage import layers as layer_store
from hw_storage.trees import TreeCache

COMPACT_AFTER = 16  # a tree of more layers is merged into one when its commit finishes


class Trees(TreeCache):
    def summarize(self, tree: tuple[str, ...]) -> Summary:
        """Size and file count of a tree about to be committed; merged into one layer if long."""
        view = self.view(tree)
        if len(tree) > COMPACT_AFTER:
            tree = (layer_store.write(self.store, view.as_layer()),)
            self.remember(tree, view)
        return Summary(tree, view.size_bytes, view.count)
