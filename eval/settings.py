"""What a run records about its settings (run.json), so that a resumed run with other settings
or other weights is refused instead of mixing answers."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from stc.eval.answer_files import EvalDataError
from stc.integrations.engine.options import DEFAULTS, MEMORY_OPTIONS

RUN_SETTINGS = ("benchmark", "model", "weights", "anno", "fps", "n_local", "topk", "memory", "max_new_tokens", "context",
                "stc", "dtype")


def memory_setting(options: dict) -> dict | None:
    """The bounded-memory options as a run records them: None when all are off (runs made before
    these options existed resume unchanged)."""
    memory = {k: options[k] for k in MEMORY_OPTIONS}
    return None if all(memory[k] == getattr(DEFAULTS, k) for k in memory) else memory


def model_setting(name) -> str:
    """How run.json names the model: a preset by name, a checkpoint folder by its resolved path
    (the same folder named relatively or absolutely is the same model)."""
    return str(Path(name).resolve()) if Path(name).is_dir() else str(name)


def check_settings(out: Path, settings: dict, keys: tuple[str, ...] = RUN_SETTINGS) -> None:
    """Refuse to resume a run made with other settings or weights (its answers would be mixed in)."""
    settings = json.loads(json.dumps(settings, default=_plain))  # as stored: tuples -> lists, mappings -> dicts
    path = out / "run.json"
    if path.exists():
        previous = json.loads(path.read_text())
        changed = [k for k in keys if previous.get(k) != settings.get(k)]
        if changed:
            raise EvalDataError(
                f"{out} holds a run with other settings ({', '.join(changed)}); use another --out to start a new run"
            )
    else:  # written whole under another name, then renamed: a process launched beside this one
        out.mkdir(parents=True, exist_ok=True)  # (torchrun, accelerate) never reads half a file
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(settings, indent=2) + "\n")
        os.replace(partial, path)


def _plain(value):
    return dict(value) if isinstance(value, Mapping) else str(value)
