"""`stc bench`: per-stage latency and memory of STC and peer methods, side by side in one run.

Every method streams the same frames through the same model in the ReKV-style engine, then
answers one question. Methods are interleaved per repeat (A B C A B C ...) after a short warm-up
run each (the first few frames), and medians are reported, with every figure also as a ratio to the first method (dense)
from the same run. Methods are named as for `--method` (see `stc.methods.METHODS`): STC's (dense,
stc, stc-cacher, stc-pruner) and the peer methods of `stc.peers` (tome, visionzip, vidcom2, dycoke,
timechat, evs, uniform, random), each optionally with `:key=value` overrides (STCConfig fields for
STC's, keep_ratio or the method's options for peers). Every stage is measured for every method:
a method that does not reduce ViT work shows the full ViT time.

Stages (seconds; CUDA synchronised at every boundary):
  video_decode    decoding and sampling the video (shared by all methods)
  preprocess      frames -> pixel values
  vit             the vision tower (with the Cacher or a ViT-side reducer inside)
  projector       the multimodal projector
  pooling         the rest of the video-feature path (LLaVA-OV's 2x2 pooling)
  selection       post-encoder token selection (the Pruner or a peer selector)
  llm_prefill     ingesting the kept tokens into the stream (sink + window attention)
  retrieval       question retrieval pass
  answer_prefill  prompt prefill over [sink][retrieved frames][prompt]
  answer_decode   greedy decoding of exactly --max-new-tokens tokens (an end token does not stop
                  it, so every method decodes the same length)
Ingestion frames/s is frames over the wall-clock of `append_frames` (with `:pipeline=true` the
encoder and prefill stages overlap, so their times add up to more than that).
"""

from stc.eval.bench.measure import (DEFAULT_QUESTION, STAGES, PeakMemory, RunResult, bench, default_video,  # noqa: F401
                                    ratios, run_method, summarise, synthetic_frames, vit_error_per_frame, vit_fidelity)
from stc.eval.bench.methods import SESSION_SETTINGS, MethodSpec, parse_methods  # noqa: F401
from stc.eval.bench.report import format_markdown, format_text, plot, table_rows  # noqa: F401
