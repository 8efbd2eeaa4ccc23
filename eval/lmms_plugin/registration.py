"""The entry point lmms-eval 0.7.3 reads (group `lmms_eval.models`): one manifest per stc model
id, with a simple and a chat class (lmms-eval picks the chat class unless `--force_simple`).
The ids are new names: a plugin entry would overwrite a built-in id of the same name."""

from __future__ import annotations

MODELS = {  # model id -> class name in stc.eval.lmms_plugin.models (its chat twin adds "Chat")
    "stc_llava_onevision": "STCLlavaOneVision",
    "stc_qwen2_vl": "STCQwen2VL",
    "stc_qwen2_5_vl": "STCQwen25VL",
    "stc_qwen3_vl": "STCQwen3VL",
    "stc_qwen3_5": "STCQwen35",
}


def manifests():
    """lmms-eval ModelManifests of the stc model ids (classes import lazily, by path)."""
    from lmms_eval.models.registry_v2 import ModelManifest  # on use: lmms-eval is optional; only it calls this entry point

    module = "stc.eval.lmms_plugin.models"
    return [ModelManifest(model_id=model_id, simple_class_path=f"{module}.{name}", chat_class_path=f"{module}.{name}Chat")
            for model_id, name in MODELS.items()]
