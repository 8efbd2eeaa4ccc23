"""A local lmms-eval task folder with generated videos, for trying the plugin without downloads
(the tests and CI use it too): `python -m stc.eval.lmms_plugin.demo_task DIR`, then
`lmms-eval --include_path DIR --tasks stc_demo,stc_demo_stream ...`.

- `stc_demo` (generate_until): multiple-choice questions on short clips, scored OVO-Bench's way
  (the right letter is a substring of the answer), metric `acc`;
- `stc_demo_stream` (generate_until_multi_round): OVO-Bench-forward-style documents whose rounds
  are pre-cut clips [0, t_i] of one video (`<id>_<i>.mp4`), a Yes/No question per round, metric `acc`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

UTILS = '''"""doc_to_* functions of the stc demo tasks (written by stc.eval.lmms_plugin.demo_task)."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def doc_to_visual(doc):
    return [os.path.join(HERE, doc["video"])]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    options = "; ".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(doc["options"])) + ";"
    return f"Question: {doc['question']}\\nOptions: {options}\\nAnswer with the option's letter only."


def process_results(doc, results):
    return {"acc": float(doc["answer"] in results[0])}


def stream_doc_to_visual(doc, lmms_eval_specific_kwargs=None):
    return [os.path.join(HERE, doc["clips"][0])]


def stream_doc_to_text(doc, lmms_eval_specific_kwargs=None, previous_output=None, round_idx=None, previous_round_info=None):
    """Round 0: the prompt alone; round i: (visuals, prompt, terminal, outputs, info) as OVO-Bench's forward task."""
    prompt = "Is the {} square visible now? Answer Yes or No."
    if round_idx is None:
        return prompt.format(doc["colours"][0])
    if round_idx == len(doc["clips"]):
        return None, None, True, previous_output, None
    return [os.path.join(HERE, doc["clips"][round_idx])], prompt.format(doc["colours"][round_idx]), False, previous_output, None


def stream_process_results(doc, results):
    rounds = results[0] if results and isinstance(results[0], list) else results
    right = [truth in answer for truth, answer in zip(doc["truths"], rounds)]
    return {"acc": sum(right) / len(doc["truths"])}
'''

TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output_type}
doc_to_visual: !function stc_demo_utils.{prefix}doc_to_visual
doc_to_text: !function stc_demo_utils.{prefix}doc_to_text
doc_to_target: {target}
process_results: !function stc_demo_utils.{prefix}process_results
generation_kwargs:
  max_new_tokens: 8
  temperature: 0
  do_sample: false
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0.0
"""

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


def write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    """uint8 RGB frames [F, H, W, 3] as an mp4 (OpenCV's mp4v)."""
    import cv2  # on use: OpenCV only to write the task's videos

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames.shape[2], frames.shape[1]))
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()


def square_frames(colours: list[str], seconds_each: int, fps: float, size: int = 64, seed: int = 0) -> np.ndarray:
    """A grey noisy background with a moving square whose colour changes every `seconds_each` s."""
    rng = np.random.default_rng(seed)
    background = rng.integers(90, 130, (size, size, 3))
    frames = []
    for k in range(int(len(colours) * seconds_each * fps)):
        frame = background + rng.integers(-6, 7, (size, size, 3))
        x = (4 + 3 * k) % (size - 24)
        frame[16:40, x:x + 24] = COLOURS[colours[int(k / fps) // seconds_each]]
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(frames)


def write_demo_task(folder: str | Path, videos: int = 3, stream_docs: int = 1) -> Path:
    """Writes the two tasks (YAML, utils, JSON data, mp4s) into `folder`; returns it."""
    folder = Path(folder).resolve()
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    (folder / "stc_demo_utils.py").write_text(UTILS)
    names = list(COLOURS)
    docs = []
    for i in range(videos):
        colour = names[i % len(names)]
        write_video(folder / "videos" / f"v{i}.mp4", square_frames([colour], 4, 2.0, seed=i), 2.0)
        options = [names[(i + j) % len(names)] for j in range(4)]
        docs.append({"id": f"v{i}", "video": f"videos/v{i}.mp4", "question": "What colour is the square?",
                     "options": options, "answer": "A"})
    streams = []
    for i in range(stream_docs):
        colours = [names[(i + j) % len(names)] for j in range(3)]
        frames = square_frames(colours, 3, 1.0, seed=100 + i)
        ends = [3, 5, 8]  # seconds: the rounds' clips [0, t_i]
        clips = []
        for r, end in enumerate(ends):
            write_video(folder / "videos" / f"s{i}_{r}.mp4", frames[:end], 1.0)
            clips.append(f"videos/s{i}_{r}.mp4")
        asked = [colours[0], colours[0], colours[2]]
        truths = ["Yes" if asked[r] == colours[(ends[r] - 1) // 3] else "No" for r in range(len(ends))]
        streams.append({"id": f"s{i}", "clips": clips, "colours": asked, "truths": truths})
    (folder / "data.json").write_text(json.dumps(docs, indent=1))
    (folder / "stream.json").write_text(json.dumps(streams, indent=1))
    (folder / "stc_demo.yaml").write_text(TASK.format(name="stc_demo", data=folder / "data.json", prefix="",
                                                      output_type="generate_until", target="answer"))
    (folder / "stc_demo_stream.yaml").write_text(TASK.format(name="stc_demo_stream", data=folder / "stream.json",
                                                             prefix="stream_", output_type="generate_until_multi_round",
                                                             target="truths"))
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stc.eval.lmms_plugin.demo_task DIR")
    print(write_demo_task(sys.argv[1]))
