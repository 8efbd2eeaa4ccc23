"""Evidence retention (ER) of selectors on the synthetic testbed, with no answer decoded.

`stc eval synthetic --evidence` streams held-out episodes through the engine (vision encoder,
selection, prefill: what `append_frames` does) once per method and budget, takes what each
question could see (`stc.eval.synthetic.seen`: the positions the engine kept of every frame, the
engine's own report, never a copy of a selector's rule) and asks of every question whether its evidence survived
(`stc.eval.synthetic.evidence.evidence_retention`). ER is the share of questions that did, per
task, per category (OVO-Bench's rt, bt, fp) and overall, with the episode bootstrap interval of
the accuracy reports (a question "correct" = its evidence retained).

Methods with a `seed` knob (random and the oracles) get their own seed per episode and draw
(`episode_config`: every episode is stream 0 of its session, so one seed would give all episodes
the same masks) and are averaged over `draws` draws: each draw's questions enter the report,
clustered by episode, so ER is the mean over draws and the interval resamples episodes.

What counts as seen (`stc.eval.synthetic.seen`): a question sees the frames the engine's
retrieval reads for it when it is asked (never an evicted block), and of each frame the kept
cells, less those where the STC-Cacher reused a token whose cell changed since its reference
frame.

Where retrieval leaves frames out (`--long`), a selection also changes what retrieval picks (a
block's representative key is the mean of its kept tokens), so the ER of one method mixes what
it kept with where its retrieval went. Each run is then also read under two fixed retrievals
(`READINGS`, `RunRetention.readings`): its kept cells on the frames dense's retrieval reads for
the same question (one retrieval for every method: the evidence oracle is the ceiling of this
reading), and on every frame the question could read (a perfect retrieval: what selection alone
keeps).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from stc.config import STCConfig
from stc.methods import options_used
from stc.peers import PEER_METHODS, MethodConfig

from stc.eval.bench.methods import MethodSpec, parse_methods
from stc.eval.reporting import Report, accuracy_report
from stc.eval.statistics import format_interval
from stc.eval.synthetic import oracle
from stc.eval.synthetic.benchmark import CATEGORIES, TITLES
from stc.eval.synthetic.episodes import Episode, episode_seed, generate_episode
from stc.eval.synthetic.evidence import Evidence, episode_evidence, evidence_retention
from stc.eval.synthetic.scene import SceneConfig
from stc.eval.synthetic.seen import EpisodeView, SceneCells, kept_cells, stream_episode  # noqa: F401  (public here too)

DEFAULT_BUDGETS = (0.5, 0.3, 0.15)
# `stc eval synthetic --long`: 128-frame episodes, a window of 4 uncompressed frames (16 tokens
# each on the shipped model) and 16 blocks per layer, so that retrieval decides what a question sees
LONG_SETTING = {"frames": 128, "n_local": 64, "topk": 16}
DEFAULT_DRAWS = 3  # draws of a seeded method (random, the oracles), averaged
# the fixed retrievals a run is also read under where retrieval leaves frames out (`RunRetention.readings`)
DENSE_RETRIEVAL, EVERY_FRAME = "dense_retrieval", "every_frame"
READINGS = {DENSE_RETRIEVAL: "ER on dense's retrieval", EVERY_FRAME: "ER on every frame"}
CACHER_NOTE = ("a token the STC-Cacher reused in some ViT block counts only where its cell is unchanged since "
               "its reference frame")


@dataclass(frozen=True)
class Run:
    """One row of the ER table: a method at one budget (None: the method has no budget knob)."""

    label: str
    config: object  # STCConfig, MethodConfig or None (dense: every token kept)
    budget: float | None
    draws: int = 1
    session: dict = field(default_factory=dict)  # StreamingSession settings (`stc bench --methods` overrides)


@dataclass
class RunRetention:
    """A run's ER (`report`: what its own retrieval read) and, where retrieval left frames out,
    the same kept cells read under the fixed retrievals of `READINGS` (name -> report)."""

    run: Run
    report: Report
    readings: dict[str, Report] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"method": self.run.label, "budget": self.run.budget, "draws": self.run.draws,
                "config": None if self.run.config is None else dict(self.run.config.__dict__),
                "report": self.report.to_json(),
                "readings": {name: report.to_json() for name, report in self.readings.items()}}


def evidence_methods(text: str) -> list:
    """`--methods` of the ER runner: `stc bench`'s method names and overrides (`parse_methods`),
    plus the references that read the scene (oracle: object cells first; evidence-oracle: the
    questions' evidence first, `stc.eval.synthetic.oracle`), which take only `seed=N`. ValueError
    for an unknown name or setting."""
    oracle.register()  # the evidence oracle joins the peer table

    specs = []
    for item in [part.strip() for part in text.split(",") if part.strip()]:
        name, *overrides = item.split(":")
        if not getattr(PEER_METHODS.get(name), "needs_ground_truth", False):
            specs += parse_methods(item, STCConfig())
            continue
        options = {}
        for override in overrides:
            key, _, value = override.partition("=")
            if key != "seed" or not value.isdigit():
                raise ValueError(f"{name} takes only seed=N (an integer >= 0), got {override!r} in {item!r}")
            options["seed"] = int(value)
        specs.append(MethodSpec(label=item, name=name, config=MethodConfig(name, options=options)))
    if not specs:
        raise ValueError("no methods given")
    return specs


def seeded(config) -> bool:
    """True for a peer method with a `seed` knob (random's draws: random and the oracles)."""
    return isinstance(config, MethodConfig) and "seed" in config.options


def budget_runs(specs, budgets, draws: int = DEFAULT_DRAWS) -> list[Run]:
    """The runs of methods (`stc.eval.bench.methods.MethodSpec`s) x budgets: a method whose config
    reads keep_ratio gets one run per budget, any other (dense, stc-cacher) one run."""
    runs = []
    for spec in specs:
        config = spec.config
        repeat = draws if seeded(config) else 1
        if config is None or "keep_ratio" not in options_used(config):
            runs.append(Run(spec.label, config, None, repeat, dict(spec.session)))
            continue
        runs.extend(Run(spec.label, config.replace(keep_ratio=budget), budget, repeat, dict(spec.session))
                    for budget in budgets)
    return runs


def episode_config(config, episode: int, draw: int):
    """The config a run uses on one episode: a seeded method's seed becomes a function of (its own
    seed, draw, episode seed), so episodes get different masks and a rerun the same ones."""
    if not seeded(config):
        return config
    state = np.random.SeedSequence([int(config.options["seed"]), draw, int(episode)]).generate_state(1)[0]
    return config.replace(options={**config.options, "seed": int(state >> 1)})


def retention_outcomes(evidence: list[Evidence], kept: dict | EpisodeView, episode: int, draw: int = 0,
                       threshold: float = 0.5, frames=None) -> list[tuple[str, bool, str, int]]:
    """(task, evidence retained, qid, episode) of every question of one episode; the qid carries
    the draw so that the draws of a seeded method stay apart. kept: frame -> kept positions, the
    same for every question, or the engine's `EpisodeView` (what each question saw). frames
    (with a view only): qid -> the frames another retrieval reads for that question, to read the
    view's kept cells there instead of on its own retrieval (`READINGS`)."""
    suffix = f"@{draw}" if draw else ""
    if not isinstance(kept, EpisodeView):
        seen = lambda qid: kept  # noqa: E731
    elif frames is None:
        seen = kept.seen
    else:
        seen = lambda qid: kept.seen_in(qid, frames(qid))  # noqa: E731
    return [(e.task, evidence_retention(e, seen(e.qid), threshold), e.qid + suffix, episode) for e in evidence]


def reading_frames(view: EpisodeView, dense: EpisodeView) -> dict:
    """`READINGS` name -> (qid -> frames) for one episode: dense's retrieval (`dense`: the dense
    run's view of the same episode) and every frame the question could read."""
    return {DENSE_RETRIEVAL: lambda qid: dense.retrieved[qid], EVERY_FRAME: lambda qid: view.held[qid]}


def retention_report(outcomes, notes=()) -> Report:
    return accuracy_report("synthetic evidence retention", outcomes, CATEGORIES, average="micro", titles=TITLES,
                           notes=list(notes), scoring="evidence retained", cluster_unit="episode")


def held_out_episodes(seed: int, n: int, scene: SceneConfig | None = None) -> list[Episode]:
    return [generate_episode(episode_seed("eval", index), scene) for index in range(seed, seed + n)]


def measure_retention(model, processor, runs: list[Run], episodes: list[Episode], threshold: float = 0.5,
                      progress: bool = True, session: dict | None = None) -> list[RunRetention]:
    """ER of every run over the episodes (each streamed once per run and draw); `session`: the
    StreamingSession settings of every run (a run's own override them). Where some run's
    retrieval left out frames a question could read, every run is also read under `READINGS`
    (dense's retrieval: a dense pass per episode under `session`, unless a dense run made it)."""
    evidence: dict[tuple[int, int], list[Evidence]] = {}

    def evidence_of(index: int):
        def by_grid(grid: int) -> list[Evidence]:
            if (index, grid) not in evidence:
                evidence[index, grid] = episode_evidence(episodes[index], grid)
            return evidence[index, grid]
        return by_grid

    scenes: dict[int, SceneCells] = {}
    dense_views: dict[int, EpisodeView] = {}
    streamed = []  # per run: (outcomes, notes, [(index, draw, view)])
    with tqdm(total=sum(run.draws for run in runs) * len(episodes), desc="evidence retention", unit="episode",
              file=sys.stderr, disable=not progress) as bar:
        for run in runs:
            bar.set_postfix_str(run.label if run.budget is None else f"{run.label} {run.budget:g}")
            outcomes, partial, views = [], 0, []
            for draw in range(run.draws):
                for index, episode in enumerate(episodes):
                    config = episode_config(run.config, episode.seed, draw)
                    scene = scenes.setdefault(index, SceneCells(episode))
                    view = stream_episode(model, processor, config, episode, evidence_of(index),
                                          {**(session or {}), **run.session}, scene)
                    outcomes += retention_outcomes(evidence_of(index)(view.grid), view, episode.seed, draw, threshold)
                    partial += sum(len(view.retrieved[query.qid]) <= query.extra["frame"] for query in episode.queries)
                    views.append((index, draw, view))
                    if run.config is None and not run.session:
                        dense_views[index] = view
                    bar.update()
            notes = [CACHER_NOTE] if run.config is not None and getattr(run.config, "reuses_vit", False) else []
            if partial:
                asked = sum(len(episode.queries) for episode in episodes)
                label = run.label if run.budget is None else f"{run.label} {run.budget:g}"
                notes.append(f"{label}: retrieval (or eviction) left out frames for {partial / run.draws:.1f} of "
                             f"{asked} questions (per draw)")
            if run.draws > 1:
                notes.append(f"mean of {run.draws} draws, each episode with its own seed")
            streamed.append((outcomes, notes, views))
        left_out = any(view.retrieved[qid] != view.held[qid] for *_, views in streamed for *_, view in views
                       for qid in view.retrieved)
        missing = [index for index in range(len(episodes)) if index not in dense_views] if left_out else []
        bar.total += len(missing)
        bar.set_postfix_str("dense's retrieval")
        for index in missing:
            dense_views[index] = stream_episode(model, processor, None, episodes[index], evidence_of(index),
                                                dict(session or {}), scenes[index])
            bar.update()
    results = []
    for run, (outcomes, notes, views) in zip(runs, streamed):
        readings = {}
        if left_out:
            read = {name: [] for name in READINGS}
            for index, draw, view in views:
                for name, frames in reading_frames(view, dense_views[index]).items():
                    read[name] += retention_outcomes(evidence_of(index)(view.grid), view, episodes[index].seed, draw,
                                                     threshold, frames)
            readings = {name: retention_report(read[name], notes) for name in READINGS}
        results.append(RunRetention(run, retention_report(outcomes, notes), readings))
    return results


def retention_table(results: list[RunRetention], markdown: bool = False) -> str:
    """One row per run: ER overall with its 95% interval, then per category; where the runs were
    also read under fixed retrievals (`READINGS`), their overall ER after it."""
    categories = ("rt", "bt", "fp")
    readings = [name for name in READINGS if any(name in result.readings for result in results)]
    header = ["method", "keep", "ER %", "95% CI", *(f"{c} %" for c in categories), "questions",  # per draw
              *(f"{READINGS[name]} %" for name in readings)]
    rows = []
    for result in results:
        report, run = result.report, result.run
        intervals = report.intervals()
        rows.append([run.label, "-" if run.budget is None else f"{run.budget:g}", f"{report.overall:.1f}",
                     format_interval(intervals.overall if intervals else None),
                     *(f"{report.categories[c]:.1f}" if c in report.categories else "-" for c in categories),
                     str(sum(count["total"] for count in report.counts.values()) // run.draws),
                     *(f"{result.readings[name].overall:.1f}" if name in result.readings else "-" for name in readings)])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header, *rows])
