"""Ops dispatched per cached (non-reference) frame per ViT layer, from the torch profiler."""
import sys, torch
import stc
from stc.eval.presets import load_model
from torch.profiler import profile, ProfilerActivity

name, mode = sys.argv[1], sys.argv[2]  # mode: dense | eager | compiled
dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[sys.argv[3] if len(sys.argv) > 3 else "float32"]
model, processor, _ = load_model(name, "cpu", dtype)
layers = len(model.model.vision_tower.encoder.layers)
size = model.config.vision_config.image_size
g = torch.Generator().manual_seed(0)
base = torch.randn(1, 1, 3, size, size, generator=g)
video = (base + 0.05 * torch.randn(1, 8, 3, size, size, generator=g)).to(dtype)
kwargs = {} if mode != "compiled" else {"compile": True}
config = None if mode == "dense" else stc.STCConfig(cache_interval=8, update_ratio=0.25, pruner=False, **kwargs)
if config is not None:
    stc.patch(model, config)
def labelled(layer):
    original = layer.forward
    def forward(*args, **kwargs):
        with torch.profiler.record_function("vit_layer"):
            return original(*args, **kwargs)
    layer.forward = forward
for layer in model.model.vision_tower.encoder.layers:
    labelled(layer)
def encode(frames):
    return model.model.get_video_features(frames, return_dict=True).pooler_output
with torch.inference_mode():
    ctx = stc.stream(model) if config is not None else __import__("contextlib").nullcontext()
    with ctx:
        encode(video[:, :1])  # frame 0: the reference
        for t in range(1, 4):
            encode(video[:, t:t + 1])  # warm-up (and compilation) on cached frames
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            encode(video[:, 4:5])  # one cached frame
def in_layer(e):
    while e is not None:
        if e.name == "vit_layer":
            return True
        e = e.cpu_parent
    return False
def top_level(e):  # an op not called by another aten op
    p = e.cpu_parent
    while p is not None and p.name != "vit_layer":
        if p.name.startswith("aten::"):
            return False
        p = p.cpu_parent
    return True
ops = [e for e in prof.events() if e.name.startswith("aten::") and in_layer(e)]
top = [e for e in ops if top_level(e)]
from collections import Counter
print(f"{name} {mode} {sys.argv[3] if len(sys.argv) > 3 else 'float32'}: per ViT layer, one cached frame: "
      f"{len(top) / layers:.1f} ops dispatched ({len(ops) / layers:.1f} incl. nested); {layers} layers")
if len(sys.argv) > 4:
    print(Counter(e.name for e in top).most_common())
