"""Recurrent-state bytes of the qwen3.5-9b-narrow preset (random weights) in the streaming engine after 2 and
4 frames of vtest.avi: the linear-attention layers' state does not grow with the stream (docs/models.md)."""
from stc.integrations.engine.session import StreamingSession
from stc.eval.presets import build_preset
from stc.integrations.video import sample_video

model, processor = build_preset("qwen3.5-9b-narrow")
video = sample_video("../shared/videos/vtest.avi", fps=1.0, max_frames=4)
with StreamingSession(model, processor, n_local=100000) as session:
    for start in (0, 2):
        session.append_frames(video.frames[start : start + 2])
        m = session.memory()
        print(f"frames {m['frames']}: recurrent_state_bytes {m['recurrent_state_bytes']}, total_bytes {m['total_bytes']}, "
              f"block_bytes_per_frame {m['block_bytes_per_frame']:.0f}")
