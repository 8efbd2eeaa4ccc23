"""lmms-eval plugin (installed as `stc.eval.lmms_plugin`): STC-patched models as lmms-eval model
ids, registered through lmms-eval's `lmms_eval.models` entry-point group (see `registration`).

`models` holds the lmms-eval classes, `options` their `--model_args`, `inputs` the frame sampling
and model inputs of offline requests, `streaming` the multi-round (streaming) requests. Nothing
here imports torchvision: lmms-eval's core does not need it and CPU installs often lack a working one.
"""
