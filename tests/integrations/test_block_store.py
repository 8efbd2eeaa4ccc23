"""The block store interface, and one battery of tests that every store passes."""

import pytest
import torch

from stc.integrations.engine.block_store import BlockStore, TensorBlockStore

LAYERS = 2


def block(seed: int, tokens: int = 3):
    """Keys and values for every layer [H_kv=2, tokens, D=4], and a layout [1, tokens]."""
    g = torch.Generator().manual_seed(seed)
    keys = [torch.randn(2, tokens, 4, generator=g) for _ in range(LAYERS)]
    values = [torch.randn(2, tokens, 4, generator=g) for _ in range(LAYERS)]
    return keys, values, torch.arange(tokens).view(1, -1) + 100 * seed


STORES = {
    "tensor-device": lambda: TensorBlockStore(LAYERS, "cpu", storage="device"),
    "tensor-cpu": lambda: TensorBlockStore(LAYERS, "cpu", storage="cpu"),
    "tensor-qvg": lambda: TensorBlockStore(LAYERS, "cpu", scheme="qvg", group=2),
}


@pytest.fixture(params=list(STORES))
def store(request) -> BlockStore:
    return STORES[request.param]()


def filled(store, count: int = 20) -> BlockStore:  # 20: past the first representative-key buffer of 16
    for i in range(count):
        keys, values, layout = block(i)
        assert store.add(keys, values, timestamp=float(i), layout=layout) == i
    return store


def test_blocks_come_back_as_stored(store):
    filled(store)
    assert len(store) == 20 and store.ids == list(range(20)) and store.timestamps == [float(i) for i in range(20)]
    for layer in range(LAYERS):
        keys, values = store.fetch(layer, [19, 0], torch.device("cpu"))
        assert torch.equal(keys, torch.cat([block(19)[0][layer], block(0)[0][layer]], dim=1))
        assert torch.equal(values, torch.cat([block(19)[1][layer], block(0)[1][layer]], dim=1))
        expected = torch.stack([block(i)[0][layer].mean(dim=1) for i in range(20)])
        torch.testing.assert_close(store.representative_keys(layer), expected)
    assert store.tokens(7) == 3 and torch.equal(store.layout(7), block(7)[2])
    assert store.nbytes() == 20 * LAYERS * 2 * (2 * 3 * 4) * 4


def test_remove_keeps_the_other_ids_and_their_representative_keys(store):
    filled(store)
    store.remove(3)
    store.remove(0)
    kept = [i for i in range(20) if i not in (0, 3)]
    assert store.ids == kept and store.timestamps == [float(i) for i in kept]
    expected = torch.stack([block(i)[0][1].mean(dim=1) for i in kept])
    torch.testing.assert_close(store.representative_keys(1), expected)
    assert torch.equal(store.fetch(0, [4], torch.device("cpu"))[0], block(4)[0][0])
    assert store.nbytes() == 18 * LAYERS * 2 * (2 * 3 * 4) * 4
    assert store.add(*block(30)[:2], timestamp=30.0, layout=block(30)[2]) == 20  # ids are never reused
    with pytest.raises(KeyError, match="no block 3"):
        store.fetch(0, [3], torch.device("cpu"))


def test_replace_changes_contents_but_not_the_place_in_time(store):
    filled(store, 4)
    keys, values, layout = block(9, tokens=1)
    store.replace(2, keys, values, layout)
    assert store.ids == [0, 1, 2, 3] and store.timestamps == [0.0, 1.0, 2.0, 3.0]
    assert store.tokens(2) == 1 and torch.equal(store.layout(2), layout)
    assert torch.equal(store.fetch(1, [2], torch.device("cpu"))[1], values[1])
    torch.testing.assert_close(store.representative_keys(0)[2], keys[0].mean(dim=1))
    assert store.nbytes() == (3 * 3 + 1) * LAYERS * 2 * (2 * 4) * 4


def test_clear_starts_a_new_stream(store):
    filled(store, 3)
    store.clear()
    assert len(store) == 0 and store.nbytes() == 0
    with pytest.raises(IndexError, match="empty"):
        store.representative_keys(0)
    assert store.add(*block(0)[:2], timestamp=0.0, layout=block(0)[2]) == 0


def test_bad_blocks_are_refused(store):
    keys, values, layout = block(0)
    with pytest.raises(ValueError, match=f"needs {LAYERS} layers"):
        store.add(keys[:1], values[:1], timestamp=0.0, layout=layout)
    with pytest.raises(KeyError, match="no block 5"):
        store.remove(5)


def test_every_method_is_abstract():
    assert BlockStore.__abstractmethods__ == {
        "add", "remove", "replace", "fetch", "representative_keys", "ids", "timestamps", "tokens", "layout",
        "nbytes", "tier_bytes", "clear", "encode", "bits"}

    class Partial(BlockStore):
        def fetch(self, layer, ids, device):
            raise NotImplementedError

    with pytest.raises(TypeError, match="abstract method"):
        Partial()


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_encoded_blocks_keep_their_representative_keys_and_come_back_close(store, bits):
    filled(store, 4)
    reps = [store.representative_keys(layer).clone() for layer in range(LAYERS)]
    full = store.tier_bytes()["full_precision"]
    store.encode(1, bits)
    assert store.bits(1) == bits and store.bits(0) == 16
    for layer in range(LAYERS):
        assert torch.equal(store.representative_keys(layer), reps[layer])  # retrieval sees no change
        keys, values = store.fetch(layer, [1], torch.device("cpu"))
        original_k, original_v = block(1)[0][layer], block(1)[1][layer]
        assert keys.shape == original_k.shape and keys.dtype == original_k.dtype
        for got, want in ((keys, original_k), (values, original_v)):
            error = (got - want).norm() / want.norm()
            assert 0 < error < {8: 0.02, 4: 0.25, 2: 0.8}[bits]
    tiers = store.tier_bytes()
    assert tiers["full_precision"] == full * 3 // 4 and tiers["quantized"] > 0
    if store.scheme == "kivi":  # qvg's centroids outweigh a 3-token block
        assert tiers["quantized"] < full // 4
    assert store.nbytes() == tiers["full_precision"] + tiers["quantized"]
    assert tiers["representative_keys"] == 4 * LAYERS * 2 * 4 * 4
    store.encode(1, bits)  # the same precision again: nothing changes
    with pytest.raises(ValueError, match="cannot be raised"):
        store.encode(1, 16)
    with pytest.raises(ValueError, match="bits must be one of"):
        store.encode(2, 3)
    store.remove(1)
    assert store.tier_bytes()["quantized"] == 0


def test_replace_after_encode_holds_the_new_contents_as_computed(store):
    filled(store, 2)
    store.encode(0, 2)
    keys, values, layout = block(5)
    store.replace(0, keys, values, layout)
    assert store.bits(0) == 16 and torch.equal(store.fetch(0, [0], torch.device("cpu"))[0], keys[0])
    assert store.tier_bytes()["quantized"] == 0


def test_blocks_own_their_memory():
    """A block that is a view of a chunk's KV is copied: encoding its neighbours frees the chunk."""
    store = TensorBlockStore(LAYERS, "cpu")
    chunk = torch.randn(2, 6, 4)
    store.add([chunk[:, :3]] * LAYERS, [chunk[:, :3]] * LAYERS, 0.0, torch.zeros(1, 3))
    held = store.fetch(0, [0], torch.device("cpu"))[0]
    assert held.untyped_storage().nbytes() == 2 * 3 * 4 * 4
