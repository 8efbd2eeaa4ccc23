"""The block store interface: what a store must implement."""

import pytest
import torch

from stc.integrations.block_store import BlockStore, TensorBlockStore


class ListStore(BlockStore):
    """A store with everything but `fetch`."""

    def __init__(self):
        self.clear()

    def add(self, keys, values, timestamp):
        self.blocks.append((keys, values, timestamp))
        return len(self.blocks) - 1

    def representative_keys(self, layer):
        return torch.stack([keys[layer].mean(dim=1) for keys, _, _ in self.blocks])

    def nbytes(self):
        return 0

    @property
    def timestamps(self):
        return [t for _, _, t in self.blocks]

    def tokens(self, block_id):
        return self.blocks[block_id][0][0].shape[1]

    def clear(self):
        self.blocks = []


def test_a_store_without_fetch_cannot_be_made():
    with pytest.raises(TypeError, match=r"abstract method '?fetch\b"):
        ListStore()

    class Complete(ListStore):
        def fetch(self, layer, ids, device):
            return tuple(torch.cat([self.blocks[i][j][layer] for i in ids], dim=1).to(device) for j in (0, 1))

    store = Complete()  # nothing else is required
    store.add([torch.ones(2, 3, 4)], [torch.zeros(2, 3, 4)], timestamp=0.0)
    assert len(store) == 1 and store.fetch(0, [0, 0], "cpu")[0].shape == (2, 6, 4)


def test_the_interface_is_what_the_engine_calls():
    assert BlockStore.__abstractmethods__ == {
        "add", "fetch", "representative_keys", "nbytes", "timestamps", "tokens", "clear"}
    store = TensorBlockStore(num_layers=1)
    for t in range(20):  # past the first representative-key buffer of 16
        store.add([torch.full((2, 3, 4), float(t))], [torch.zeros(2, 3, 4)], timestamp=t)
    assert store.representative_keys(0)[:, 0, 0].tolist() == [float(t) for t in range(20)]
    keys, _ = store.fetch(0, [19, 0], torch.device("cpu"))
    assert keys.shape == (2, 6, 4) and keys[0, :3].eq(19).all() and keys[0, 3:].eq(0).all()
