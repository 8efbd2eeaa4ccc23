"""Loading a local checkpoint (model + processor) with clear errors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from stc.errors import InputError, STCError
from stc.integrations.processing import load_processor
from stc.registry import FAMILIES, supported_model_types


class CheckpointError(InputError):
    """A model path that cannot be loaded: missing, not a checkpoint, or unsupported."""


class BrokenDependencyError(STCError):
    """An installed package that keeps transformers from loading models (see `compat.torchvision_problem`)."""


def require_working_torchvision() -> None:
    """Refuses, in one sentence, to load a model beside a torchvision that does not import."""
    from stc.integrations.compat import torchvision_problem  # on use: it imports transformers

    problem = torchvision_problem()
    if problem:
        raise BrokenDependencyError(problem)


def load_checkpoint(path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype | None = None):
    """(model, processor) from a local Hugging Face checkpoint folder, in eval mode on `device`."""
    require_working_torchvision()
    from transformers import AutoModelForImageTextToText  # imported on use: transformers takes seconds to load

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model path not found or not a folder: {path} (models are loaded from local folders)")
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{path} has no config.json: not a Hugging Face checkpoint")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (ValueError, AttributeError) as exc:
        raise CheckpointError(f"{config_file}: not a valid config.json ({exc})") from None
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"{path} holds a {model_type!r} model; STC supports {supported_model_types()}"
        )
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype or torch.float32)
        processor = load_processor(path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the checkpoint in {path}: {exc}") from exc
    return model.to(device).eval(), processor


def checkpoint_fingerprint(name: str | os.PathLike) -> str:
    """A short id of a checkpoint folder's weights, so a resumed evaluation can tell that the
    weights changed (retrained or replaced) without reading whole shards: each weight file
    contributes its name, size and its first and last MiB."""
    digest = hashlib.sha256()
    chunk = 1 << 20
    for path in sorted(Path(name).glob("*.safetensors")) + sorted(Path(name).glob("*.bin")):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(chunk))
            handle.seek(max(0, size - chunk))
            digest.update(handle.read(chunk))
    return digest.hexdigest()[:16]


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """The torch dtype a `dtype` setting names; "auto" is bfloat16 on CUDA, float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of one token's keys and values over the language model's full-attention layers (the
    layers whose KV a stream keeps), from a model config: the least any memory budget must hold."""
    text = getattr(config, "text_config", config)
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    layer_types = getattr(text, "layer_types", None) or ["full_attention"] * text.num_hidden_layers
    layers = sum(kind == "full_attention" for kind in layer_types) or text.num_hidden_layers
    return 2 * layers * heads * head_dim * torch.empty((), dtype=dtype).element_size()
