"""Per-stream counters: when one call encodes several streams (batch rows), each stream's
`Stream.stats` holds exactly the counters that stream gives when it is encoded alone, and the
call's totals (`stc.stats`) are what they were before streams had counters of their own."""

import pytest
import torch

import stc
from stc import STCConfig
from stc.api import state_of
from tests.tiny import llava_video_inputs, tiny_llava

CONFIGS = {
    "cacher and pruner": STCConfig(cache_interval=3, update_ratio=0.5, keep_ratio=0.5),
    "scene cuts on every frame": STCConfig(cache_interval=4, keep_ratio=0.5, cut_threshold=0.99),
    "drift": STCConfig(cache_interval=4, keep_ratio=0.75, cut_threshold=None, drift_threshold=0.99),
    "off": STCConfig.off(),
}
CALLS, FRAMES, STREAMS = 3, 2, 3


def _videos(seed: int):
    """Per call: pixels [STREAMS, FRAMES, ...] and the prompt ids of one row."""
    pixels, ids = llava_video_inputs(CALLS * FRAMES, batch=STREAMS, smooth=True, seed=seed)
    one_call = llava_video_inputs(FRAMES)[1]
    return [pixels[:, c * FRAMES : (c + 1) * FRAMES] for c in range(CALLS)], one_call


def _encode(model, calls, ids, rows):
    """Feed rows `rows` of every call through the patched model's forward as one stream each."""
    with torch.no_grad(), stc.stream(model):
        for pixels in calls:
            model(input_ids=ids.expand(len(rows), -1), pixel_values_videos=pixels[rows])
        state = state_of(model)
        return [s.stats.as_dict() for s in state.streams], state.stats.as_dict()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_stream_of_a_batched_call_counts_what_it_counts_alone(name):
    model = stc.patch(tiny_llava(), CONFIGS[name])
    calls, ids = _videos(seed=3)
    alone = [_encode(model, calls, ids, [s]) for s in range(STREAMS)]
    batched, total = _encode(model, calls, ids, list(range(STREAMS)))
    for s in range(STREAMS):
        assert batched[s] == alone[s][0][0], f"stream {s}"
        assert alone[s][0][0] == alone[s][1], "one stream: its counters are the call's"
    assert total["frames"] == STREAMS * CALLS * FRAMES
    for key in ("frames", "reference_frames", "cut_references", "drift_references", "vit_tokens", "cached_tokens",
                "llm_tokens_in", "llm_tokens_kept"):
        assert total[key] == sum(b[key] for b in batched), key
    if name != "off":
        assert batched[0]["llm_tokens_kept"] < batched[0]["llm_tokens_in"]
    if name == "scene cuts on every frame":
        assert all(b["cut_references"] > 0 for b in batched)
    if name == "drift":
        assert all(b["drift_references"] > 0 for b in batched)
    stc.unpatch(model)
