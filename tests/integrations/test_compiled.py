"""STCConfig(compile=True): the Cacher's blocks under torch.compile match the eager path
(float64, every family), trace without graph breaks, and do not recompile from chunk to chunk."""

import pytest
import torch
from torch._dynamo.utils import counters

import stc
from tests.tiny import QWEN_FAMILIES, llava_video_inputs, qwen_video_inputs, tiny_llava, tiny_qwen

FAMILIES = ["llava_onevision", *QWEN_FAMILIES]


def build(family):
    return tiny_llava() if family == "llava_onevision" else tiny_qwen(family)


def chunks(family, count: int, frames: int):
    """`count` consecutive chunks of one smooth video, as vision-encoder inputs."""
    if family == "llava_onevision":
        pixels, _ = llava_video_inputs(frames=count * frames, smooth=True)
        return [{"pixel_values_videos": pixels[:, i * frames:(i + 1) * frames]} for i in range(count)]
    out = []
    for i in range(count):  # one call's frames per chunk (different seeds: what matters is the reuse path)
        inputs = qwen_video_inputs(frames=frames, smooth=True, seed=i)
        out.append({"pixel_values_videos": inputs["pixel_values_videos"], "video_grid_thw": inputs["video_grid_thw"]})
    return out


def stream_features(model, config, inputs) -> list[torch.Tensor]:
    """Visual features of each chunk, encoded as one stream."""
    out = []
    with stc.patched(model, config), stc.stream(model), torch.no_grad():
        for chunk in inputs:
            out.append(model.model.get_video_features(**chunk, return_dict=True).pooler_output)
    return [torch.cat(list(o)) if isinstance(o, (tuple, list)) else o for o in out]


@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_path_matches_eager_without_recompiling(family):
    torch._dynamo.reset()
    model = build(family)
    inputs = chunks(family, count=4, frames=4)
    config = stc.STCConfig(cache_interval=2, update_ratio=0.5, pruner=False)
    eager = stream_features(model, config, inputs)
    counters.clear()
    compiled = stream_features(model, config.replace(compile=True), inputs[:2])
    graphs = counters["stats"]["unique_graphs"]
    compiled += stream_features(model, config.replace(compile=True), inputs)[2:]
    assert graphs > 0
    assert counters["stats"]["unique_graphs"] == graphs, "a later chunk of the same geometry recompiled"
    assert not counters["graph_break"]
    # Qwen's own vision rotary casts to float32, so there the paths agree to float32 rounding
    tolerance = 1e-9 if family == "llava_onevision" else 1e-6
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
    assert stc.STCConfig(compile=True).compile and not stc.STCConfig().compile


def test_compile_must_be_a_bool():
    with pytest.raises(ValueError, match="compile must be True or False"):
        stc.STCConfig(compile="yes")
