"""A testbed training run's state between steps and its checkpoint, so that a run paused by
`--stop-after-minutes` continues with `--resume` exactly where it stopped (see `TrainingRun`)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch


def adamw(parameters: list, config) -> torch.optim.AdamW:
    """The optimiser of a phase (`config`: the run's TrainConfig)."""
    return torch.optim.AdamW(parameters, lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay)


PHASES = ("vision", "main")  # the vision tower alone, then everything (look-ups, perception, episodes)
CHECKPOINT = "checkpoint.pt"


class TrainingPaused(Exception):
    """The run's time budget ran out; its checkpoint holds everything needed to resume."""


class TrainingRun:
    """What a training run carries from step to step, and its checkpoint (`out_dir/checkpoint.pt`):
    the model, the auxiliary heads, the current phase's optimiser, every random generator and the
    counters. It is written every `checkpoint_every` steps (atomically: a killed run leaves the
    previous one) and when the time budget runs out, so `train --resume` goes on exactly where the
    run stopped, in the same session or a later one; it is deleted when training completes."""

    def __init__(self, out_dir: Path, config, arch, model, heads,
                 resume: dict | None = None, deadline: float | None = None):
        self.path = Path(out_dir) / CHECKPOINT
        self.config, self.arch, self.model, self.heads = config, arch, model, heads
        self.rngs = {name: np.random.default_rng([config.seed, index]) for index, name in
                     enumerate(("lookup", "vision", "perception", "drop"))}
        self.next_episode, self.trained_before = 0, 0.0
        self.started, self.deadline, self.resume = time.perf_counter(), deadline, resume
        if resume is not None:
            model.load_state_dict(resume["model"])
            heads.load_state_dict(resume["heads"])
            for name, state in resume["rngs"].items():
                self.rngs[name].bit_generator.state = state
            torch.set_rng_state(resume["torch_rng"])
            self.next_episode, self.trained_before = resume["next_episode"], resume["trained_s"]

    def first_step(self, phase: str) -> int | None:
        """The step this process starts `phase` at: 0, where the resumed run stopped, or None
        when the resumed run had finished the phase."""
        if self.resume is None:
            return 0
        done, here = PHASES.index(self.resume["phase"]), PHASES.index(phase)
        return None if here < done else self.resume["step"] if here == done else 0

    def optimizer(self, phase: str, parameters: list) -> torch.optim.AdamW:
        optimizer = adamw(parameters, self.config)
        if self.resume is not None and self.resume["phase"] == phase:
            optimizer.load_state_dict(self.resume["optimizer"])
        return optimizer

    def step_done(self, phase: str, step: int, optimizer) -> None:
        """Checkpoint when due; raise TrainingPaused (after checkpointing) when out of time."""
        out_of_time = self.deadline is not None and time.perf_counter() >= self.deadline
        if (step + 1) % self.config.checkpoint_every == 0 or out_of_time:
            self.save(phase, step + 1, optimizer)
        if out_of_time:
            raise TrainingPaused(f"{phase} phase, step {step + 1}")

    def save(self, phase: str, step: int, optimizer) -> None:
        state = {"phase": phase, "step": step, "model": self.model.state_dict(), "heads": self.heads.state_dict(),
                 "optimizer": optimizer.state_dict(), "rngs": {n: r.bit_generator.state for n, r in self.rngs.items()},
                 "torch_rng": torch.get_rng_state(), "next_episode": self.next_episode, "trained_s": self.elapsed(),
                 "config": asdict(self.config), "arch": asdict(self.arch)}
        partial = self.path.with_suffix(".partial")
        torch.save(state, partial)
        os.replace(partial, self.path)

    def elapsed(self) -> float:
        """Seconds trained, over every process of this run."""
        return self.trained_before + time.perf_counter() - self.started


__all__ = ["CHECKPOINT", "PHASES", "TrainingPaused", "TrainingRun", "adamw"]
