"""The model families of the adapter test battery, as a table (peft-style): one `Family` row per
supported family, each knowing how to build its tiny model and inputs and how to compute the
references the battery compares against by hand (no STC code involved)."""

from __future__ import annotations

from dataclasses import dataclass
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from stc.eval.presets import VIDEO_TOKEN, VISION_END, VISION_START, build_qwen3
from stc.pruner import PrunerHistory, gather_tokens, prune_frames
from tests.tiny import (QWEN_MERGE, QWEN_PATCH, QWEN_TEMPORAL, TINY_WORDS, llava_video_inputs, qwen_video_inputs,
                        random_frames, tiny_llava, tiny_processor, tiny_qwen, tiny_qwen_processor)


def _language_logits(model, embeds, positions, **extra):
    with torch.no_grad():
        hidden = model.model.language_model(
            inputs_embeds=embeds[None], position_ids=positions,
            attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long), **extra,
        ).last_hidden_state
    return model.lm_head(hidden)


# -- LLaVA-OneVision ------------------------------------------------------------------------------


def _llava_inputs(frames: int, smooth: bool = False, seed: int = 0) -> dict:
    pixels, ids = llava_video_inputs(frames, smooth=smooth, seed=seed)
    return {"input_ids": ids, "pixel_values_videos": pixels}


def _llava_vit(model, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model.model.get_video_features(inputs["pixel_values_videos"], return_dict=True).pooler_output]


def _llava_hand_pruned(model, inputs, keep_ratio, scoring, alpha):
    ids = inputs["input_ids"]
    features = _llava_vit(model, inputs)[0]
    frames = inputs["pixel_values_videos"].shape[1]
    tokens = features[0, :-1].reshape(frames, -1, features.shape[-1])
    keep = prune_frames(tokens, PrunerHistory(), keep_ratio, scoring=scoring, alpha=alpha)
    kept = torch.cat([gather_tokens(tokens, keep).reshape(-1, tokens.shape[-1]), features[0, -1:]])
    video = (ids[0] == VIDEO_TOKEN).nonzero().flatten()
    kept_video = torch.cat([video[:-1].view(frames, -1).gather(1, keep).flatten(), video[-1:]])
    columns = torch.cat([(ids[0] != VIDEO_TOKEN).nonzero().flatten(), kept_video]).sort().values
    embeds = model.get_input_embeddings()(ids[0, columns]).clone()
    embeds[ids[0, columns] == VIDEO_TOKEN] = kept
    return _language_logits(model, embeds, columns[None]), columns


def _llava_offline(model, session, frames, question, n):
    pixels = session.processor.frames(frames)[None].to(model.dtype)
    with torch.no_grad():
        features = model.model.get_video_features(pixels, return_dict=True).pooler_output[:, :-1]
    ids = session.template.header_ids() + [VIDEO_TOKEN] * features.shape[1] + session.template.prompt_ids(question)
    out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                         mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=features)})
    return out[0, len(ids):].tolist()


# -- Qwen2-VL / Qwen2.5-VL ----------------------------------------------------------------------


def _qwen_inputs(frames: int, smooth: bool = False, seed: int = 0) -> dict:
    return qwen_video_inputs(frames, smooth=smooth, seed=seed)


def _qwen_vit(model, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True)
    taps = [torch.cat(tap) for tap in getattr(out, "deepstack_features", None) or []]
    return [torch.cat(out.pooler_output), *taps]


def _qwen_hand_pruned(model, inputs, keep_ratio, scoring, alpha):
    """Kept embeddings (and kept DeepStack features) only, at the positions get_rope_index gives
    the UNPRUNED sequence."""
    ids = inputs["input_ids"]
    main, *taps = _qwen_vit(model, inputs)
    slices = int(inputs["video_grid_thw"][0, 0])
    tokens = main.view(slices, -1, main.shape[-1])
    keep = prune_frames(tokens, PrunerHistory(), keep_ratio, scoring=scoring, alpha=alpha)
    kept = gather_tokens(tokens, keep).reshape(-1, main.shape[-1])
    positions, _ = model.model.get_rope_index(ids, inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"])
    video = (ids[0] == VIDEO_TOKEN).nonzero().flatten()
    kept_video = video.view(slices, -1).gather(1, keep).flatten()
    columns = torch.cat([(ids[0] != VIDEO_TOKEN).nonzero().flatten(), kept_video]).sort().values
    embeds = model.get_input_embeddings()(ids[0, columns]).clone()
    embeds[ids[0, columns] == VIDEO_TOKEN] = kept
    extra = {}
    if taps:
        extra = {"visual_pos_masks": (ids[0, columns] == VIDEO_TOKEN)[None],
                 "deepstack_visual_embeds": [gather_tokens(t.view(slices, -1, t.shape[-1]), keep).reshape(-1, t.shape[-1])
                                             for t in taps]}
    return _language_logits(model, embeds, positions[:, :, columns], **extra), columns


def _qwen_offline(model, session, frames, question, n):
    pixels, grid = session.adapter.preprocess(model, session.processor, frames)
    with torch.no_grad():
        features = model.model.get_video_features(pixels, grid, return_dict=True).pooler_output
    ids = torch.tensor([session.template.header_ids() + [VIDEO_TOKEN] * features[0].shape[0]
                        + session.template.prompt_ids(question)])
    extra = {"second_per_grid_ts": torch.tensor([2.0])} if model.config.model_type == "qwen2_5_vl" else {}
    out = model.generate(input_ids=ids, mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=features)},
                         video_grid_thw=grid, mm_token_type_ids=2 * (ids == VIDEO_TOKEN).long(), max_new_tokens=n,
                         do_sample=False, **extra)
    return out[0, ids.shape[1]:].tolist()


# -- Qwen3-VL / Qwen3.5 ---------------------------------------------------------------------------

QWEN3_WORDS = TINY_WORDS + ["seconds", "<", ">", *"0123456789"]
STAMP = (20, 21)  # two word ids standing for a slice's timestamp text in hand-made prompts


def qwen3_video_inputs(frames: int, smooth: bool = False, seed: int = 0, size=(24, 24)) -> dict:
    """As `qwen_video_inputs`, with Qwen3-VL's prompt layout: every temporal slice is
    <timestamp> <|vision_start|> <|video_pad|> x h*w/4 <|vision_end|>."""
    base = qwen_video_inputs(frames, size=size, smooth=smooth, seed=seed)
    t, h, w = base["video_grid_thw"][0].tolist()
    row = [1, 5, 6]
    for _ in range(t):
        row += [*STAMP, VISION_START] + [VIDEO_TOKEN] * (h * w // QWEN_MERGE**2) + [VISION_END]
    ids = torch.tensor([row + [7, 8, 9, 10]])
    return {**base, "input_ids": ids, "mm_token_type_ids": 2 * (ids == VIDEO_TOKEN).long()}


def tiny_qwen3(name: str, dtype=torch.float64, seed: int = 0):
    model = build_qwen3(name, dtype=dtype, seed=seed)
    if "moe" in name:  # transformers' default grouped expert matmul has no float64 kernel on CPU
        model.set_experts_implementation("eager")
    return model


def tiny_qwen3_processor():
    from stc.eval.presets import QWEN3_MEAN_STD, build_qwen_word_tokenizer
    from stc.integrations.processing import QwenVideoPreprocessing, VideoLLMProcessor

    frames = QwenVideoPreprocessing(min_pixels=8 * 8, max_pixels=32 * 32, patch_size=QWEN_PATCH,
                                    temporal_patch_size=QWEN_TEMPORAL, mean=QWEN3_MEAN_STD, std=QWEN3_MEAN_STD)
    return VideoLLMProcessor(build_qwen_word_tokenizer(QWEN3_WORDS), frames)


def _qwen3_offline(model, session, frames, question, n, sample_fps: float = 1.0):
    """generate over [header] + per slice `<t seconds><|vision_start|>` tokens `<|vision_end|>`
    + [prompt], as Qwen3-VL's processor lays a video out, with the unpatched encoder's features."""
    pixels, grid = session.adapter.preprocess(model, session.processor, frames)
    with torch.no_grad():
        encoded = model.model.get_video_features(pixels, grid, return_dict=True)
    t, h, w = grid[0].tolist()
    ids = session.template.header_ids()
    for j in range(t):
        times = [f / sample_fps for f in range(2 * j, min(2 * j + 2, len(frames)))]
        ids += session.template.ids(f"<{(times[0] + times[-1]) / 2:.1f} seconds>")
        ids += [VISION_START] + [VIDEO_TOKEN] * (h * w // QWEN_MERGE**2) + [VISION_END]
    ids = torch.tensor([ids + session.template.prompt_ids(question)])
    out = model.generate(input_ids=ids, mm_encoder_outputs={"video": encoded}, video_grid_thw=grid,
                         mm_token_type_ids=2 * (ids == VIDEO_TOKEN).long(), max_new_tokens=n, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


# -- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    model_type: str
    build: callable  # (seed) -> tiny float64 model
    inputs: callable  # (frames, smooth, seed) -> model kwargs with a video
    frames_per_block: int
    vit_outputs: callable  # (model, inputs) -> [main features, extra features...]
    hand_pruned: callable  # (model, inputs, keep_ratio, scoring, alpha) -> (logits, kept columns)
    processor: callable  # () -> engine processor
    offline: callable  # (model, session, frames, question, n) -> greedy token ids
    frame_size: int


FAMILIES = {
    "llava_onevision": Family("llava_onevision", lambda seed=0: tiny_llava(seed=seed), _llava_inputs, 1, _llava_vit,
                              _llava_hand_pruned, tiny_processor, _llava_offline, 28),
    "qwen2_vl": Family("qwen2_vl", lambda seed=0: tiny_qwen("qwen2_vl", seed=seed), _qwen_inputs, 2, _qwen_vit,
                       _qwen_hand_pruned, tiny_qwen_processor, _qwen_offline, 24),
    "qwen2_5_vl": Family("qwen2_5_vl", lambda seed=0: tiny_qwen("qwen2_5_vl", seed=seed), _qwen_inputs, 2, _qwen_vit,
                         _qwen_hand_pruned, tiny_qwen_processor, _qwen_offline, 24),
    "qwen3_vl": Family("qwen3_vl", lambda seed=0: tiny_qwen3("qwen3-vl-tiny", seed=seed), qwen3_video_inputs, 2, _qwen_vit,
                       _qwen_hand_pruned, tiny_qwen3_processor, _qwen3_offline, 24),
    "qwen3_vl_moe": Family("qwen3_vl_moe", lambda seed=0: tiny_qwen3("qwen3-vl-moe-tiny", seed=seed), qwen3_video_inputs, 2,
                           _qwen_vit, _qwen_hand_pruned, tiny_qwen3_processor, _qwen3_offline, 24),
    "qwen3_5_moe": Family("qwen3_5_moe", lambda seed=0: tiny_qwen3("qwen3.5-moe-tiny", seed=seed), qwen3_video_inputs, 2,
                          _qwen_vit, _qwen_hand_pruned, tiny_qwen3_processor, _qwen3_offline, 24),
    "qwen3_5": Family("qwen3_5", lambda seed=0: tiny_qwen3("qwen3.5-tiny", seed=seed), qwen3_video_inputs, 2, _qwen_vit,
                      _qwen_hand_pruned, tiny_qwen3_processor, _qwen3_offline, 24),
}


def engine_frames(family: Family, count: int, seed: int = 0):
    return random_frames(count, size=family.frame_size, seed=seed)
