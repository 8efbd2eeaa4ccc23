"""OVO-Bench (CVPR 2025): annotations to queries, and the official scoring rules.

Source of truth: JoeLeelyf/OVO-Bench (annotation file data/ovo_bench_new.json; prompts in
constant.py and utils/OVOBench.py `build_prompt`; scoring in utils/OVOBenchScore.py
`OVOBenchOfflineScore`). The prompt texts below are the repository's templates verbatim (they
are benchmark data: a model must see exactly these words for its score to be comparable).

Tasks: Real-Time Visual Perception (RT) OCR, ACR, ATR, STU, FPD, OJR; Backward Tracing (BT)
EPM, ASI, HLD; Forward Active Responding (FAR) REC, SSR, CRR.

- RT and BT entries are multiple choice, asked once at `realtime`; qid = str(id).
- FAR entries carry timed probes (`test_info`), each asked at its own `realtime`;
  qid = f"{id}#{probe index}". REC asks for a count, SSR and CRR for Yes/No.

Videos: the annotation's `video` is relative to the official source-video folder, which the
OVO-Bench dataset (huggingface JoeLeelyf/OVO-Bench, src_videos.tar.parta*) unpacks as
`data/src_videos/<source>/...` (e.g. `Ego4D/clips/<uid>.mp4`, `COIN/<id>.mp4`); the official
inference joins `--video_dir data/src_videos` with it, and so does our runner with --video-root.

Scoring (official, reproduced exactly):
- MC: correct iff the ground-truth letter is a substring of the response (None -> wrong).
- REC: all digit runs of the response concatenated == str(count).
- SSR/CRR: a response of exactly "Y"/"N" counts as Yes/No; otherwise correct iff "Yes" (type 1)
  or "No" (type 0) is a substring of the response.
- Forward tasks are scored per probe (each probe one question), as the official code does.
- Task accuracy = mean over its questions/probes; category = unweighted mean of its tasks;
  Overall = mean of the three categories (the current official `score()`, which gives the
  published leaderboard; an older version averaged all tasks instead).

Models: results are never pooled across models. The official layout keeps one model's raw
outputs in results/<model>/, named <model>_<tasks>_offline.json; a folder (or each model folder
of a parent folder such as results/), and within a folder each such <model> name, is one model
and gets its own report.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from stc.eval.answer_files import EvalDataError, read_answer_file, read_json, response_text
from stc.eval.records import Query, iter_answer_files
from stc.eval.reporting import Report, accuracy_report
from stc.integrations.engine.prompt import lettered_options, option_letter

BENCHMARK = "OVO-Bench"
REALTIME_TASKS = ("OCR", "ACR", "ATR", "STU", "FPD", "OJR")
BACKWARD_TASKS = ("EPM", "ASI", "HLD")
FORWARD_TASKS = ("REC", "SSR", "CRR")
TASKS = REALTIME_TASKS + BACKWARD_TASKS + FORWARD_TASKS
CATEGORIES = {"RT": REALTIME_TASKS, "BT": BACKWARD_TASKS, "FAR": FORWARD_TASKS}
CATEGORY_TITLES = {
    "RT": "Real-Time Visual Perception",
    "BT": "Backward Tracing",
    "FAR": "Forward Active Responding",
}
# Sections of an official results file {"backward": [...], "realtime": [...], "forward": [...]}.
RESULT_SECTIONS = ("backward", "realtime", "forward")
# An official results file name: <model>_<task>[_<task>...]_offline[_<n>].json.
OFFICIAL_NAME = re.compile(rf"(?P<model>.+?)_(?:(?:{'|'.join(TASKS)})_)+(?:offline|online)(?:_\d+)?\.json")


def _lines(*lines: str) -> str:
    """A prompt template from its lines, framed by newlines as the official triple-quoted
    templates are (trailing spaces inside lines are part of the official text)."""
    return "\n" + "\n".join(lines) + "\n"


MULTIPLE_CHOICE_PROMPT = _lines(
    "Question: {}",
    "Options:",
    "{}",
    "",
    "Respond only with the letter corresponding to your chosen option (e.g., A, B, C). ",
    "Do not include any additional text or explanation in your response.",
)

REC_PROMPT = _lines(
    "You're watching a video in which people may perform a certain type of action repetively. ",
    "The person performing this kind of action are referred to as 'they' in the following statement.",
    "You're task is to count how many times have different people in the video perform this kind of action in total.",
    "One complete motion counts as one. ",
    "Now, answer the following question: {}",
    "Provide your answer as a single number (e.g., 0, 1, 2, 3\u2026) indicating the total count.",
    "Do not include any additional text or explanation in your response.",
)

SSR_PROMPT = _lines(
    "You're watching a tutorial video which contain a sequential of steps. ",
    "The following is one step from the whole procedures: ",
    "{}",
    "Your task is to determine if the man or woman in the video is currently performing this step.",
    "Answer only with \u201cYes\u201d or \u201cNo\u201d.",
    "Do not include any additional text or explanation in your response.",
)

CRR_PROMPT = _lines(
    "You're responsible of answering questions based on the video content. ",
    "The following question are relevant to the latest frames, i.e. the end of the video.",
    "{}",
    "Decide whether existing visual content, especially latest frames, i.e. frames that near the end of the video, "
    "provide enough information for answering the question.",
    "Answer only with \u201cYes\u201d or \u201cNo\u201d.",
    "Do not include any additional text or explanation in your response.",
)


def category_of(task: str) -> str:
    """RT, BT or FAR."""
    for category, tasks in CATEGORIES.items():
        if task in tasks:
            return category
    raise ValueError(f"unknown OVO-Bench task {task!r}")


def multiple_choice_prompt(question: str, options: Sequence[str]) -> str:
    """Official RT/BT prompt; options rendered "A. opt; B. opt; ...;"."""
    rendered = "; ".join(lettered_options(options, keep_lettered=False)) + ";"
    return MULTIPLE_CHOICE_PROMPT.format(question, rendered)


def yes_no_answer(probe_type: int) -> str:
    """SSR/CRR probe type 1 -> "Yes" (the step is happening / the clue is visible), 0 -> "No"."""
    return "Yes" if int(probe_type) == 1 else "No"


# ---------------------------------------------------------------------------------------------
# Loading


def load_ovo_bench(path: str | os.PathLike, tasks: Iterable[str] | None = None) -> list[Query]:
    """Queries of an OVO-Bench annotation file (all 12 tasks, or only `tasks`), in file order."""
    wanted = _checked_tasks(tasks)
    entries = read_json(path)
    if not isinstance(entries, list):
        raise EvalDataError(f"{path}: not an OVO-Bench annotation file (expected a JSON list)")
    queries: list[Query] = []
    for entry in entries:
        task = entry.get("task") if isinstance(entry, dict) else None
        if task not in TASKS:
            raise EvalDataError(f"{path}: entry without a known OVO-Bench task: {str(entry)[:120]}")
        if task not in wanted:
            continue
        try:
            if task in FORWARD_TASKS:
                queries.extend(_forward_queries(entry))
            else:
                queries.append(_multiple_choice_query(entry))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise EvalDataError(f"{path}: malformed {task} entry id {entry.get('id')!r} ({exc!r})") from None
    return queries


def _checked_tasks(tasks: Iterable[str] | None) -> tuple[str, ...]:
    if tasks is None:
        return TASKS
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown OVO-Bench task(s) {', '.join(unknown)}; tasks are {', '.join(TASKS)}")
    return tasks


def _multiple_choice_query(entry: dict) -> Query:
    task = entry["task"]
    if not 0 <= int(entry["gt"]) < len(entry["options"]):
        raise ValueError(f"gt {entry['gt']} out of range for {len(entry['options'])} options")
    return Query(
        qid=str(entry["id"]),
        video=entry["video"],
        time=float(entry["realtime"]),
        prompt=multiple_choice_prompt(entry["question"], entry["options"]),
        answer=option_letter(entry["gt"]),
        task=task,
        kind="mc",
        extra={"id": entry["id"], "category": category_of(task), "visible_until": _visible_until(entry["realtime"])},
    )


def _visible_until(realtime) -> float:
    """The official protocol shows the model video [0, ceil(realtime)]."""
    return float(math.ceil(float(realtime)))


def _forward_queries(entry: dict) -> list[Query]:
    task = entry["task"]
    queries = []
    for index, probe in enumerate(entry["test_info"]):
        extra = {"id": entry["id"], "probe": index, "category": "FAR", "visible_until": _visible_until(probe["realtime"])}
        if task == "REC":
            prompt = REC_PROMPT.format(f"How many times did they {entry['activity']}?")
            answer, kind = str(probe["count"]), "count"
            extra["count"] = probe["count"]
        elif task == "SSR":
            prompt = SSR_PROMPT.format(probe["step"])
            answer, kind = yes_no_answer(probe["type"]), "yesno"
            extra.update(step=probe["step"], type=probe["type"])
        else:  # CRR: the question only; the annotated answer is not shown to the model
            prompt = CRR_PROMPT.format(entry["question"])
            answer, kind = yes_no_answer(probe["type"]), "yesno"
            extra.update(type=probe["type"], ask_time=entry.get("ask_time"), clue_time=entry.get("clue_time"))
        queries.append(Query(
            qid=f"{entry['id']}#{index}",
            video=entry["video"],
            time=float(probe["realtime"]),
            prompt=prompt,
            answer=answer,
            task=task,
            kind=kind,
            extra=extra,
        ))
    return queries


# ---------------------------------------------------------------------------------------------
# Rules


def score_multiple_choice(response: object, gt_letter: str) -> bool:
    """Official MC rule: the ground-truth letter appears anywhere in the response."""
    text = response_text(response)
    return text is not None and gt_letter in text


def score_count(response: object, count: int | str) -> bool:
    """Official REC rule: all digits of the response, concatenated, equal the count."""
    text = response_text(response)
    return text is not None and "".join(re.findall(r"\d+", text)) == str(count)


def score_yes_no(response: object, expected: str) -> bool:
    """Official SSR/CRR rule: a bare "Y"/"N" response counts; else "Yes"/"No" must appear."""
    if expected not in ("Yes", "No"):
        raise ValueError(f"expected must be 'Yes' or 'No', got {expected!r}")
    text = response_text(response)
    if text is None:
        return False
    return text == expected[0] or expected in text


def is_correct(query: Query, response: object) -> bool:
    """Whether `response` answers `query` correctly under the official rule of its task."""
    if query.task == "REC":
        return score_count(response, query.answer)
    if query.task in ("SSR", "CRR"):
        return score_yes_no(response, query.answer)
    return score_multiple_choice(response, query.answer)


# ---------------------------------------------------------------------------------------------
# Scoring


def score_ovo_bench(
    results: str | os.PathLike | Sequence[str | os.PathLike],
    anno: str | os.PathLike | None = None,
    *,
    missing_as_wrong: bool = False,
) -> Report:
    """The report of one model's results (see `score_ovo_bench_models`); results of several
    models are refused."""
    reports = score_ovo_bench_models(results, anno, missing_as_wrong=missing_as_wrong)
    if len(reports) > 1:
        raise EvalDataError(f"{', '.join(map(str, _paths(results)))}: holds the results of {len(reports)} models "
                            f"({', '.join(r.model for r in reports)}); give one model's results")
    return reports[0]


def score_ovo_bench_models(
    results: str | os.PathLike | Sequence[str | os.PathLike],
    anno: str | os.PathLike | None = None,
    *,
    missing_as_wrong: bool = False,
) -> list[Report]:
    """Score OVO-Bench results, one report per model: official raw outputs or answers JSONL.

    `results` is a file, a directory or a list of them. Official outputs are JSON files
    {"backward": [...], "realtime": [...], "forward": [...]} (a directory: all its *.json);
    answers are JSONL files of Answer records (a directory: all its *.jsonl, which take
    precedence over *.json), matched by qid to the queries of the annotation file `anno`.
    A directory without result files stands for its subdirectories (e.g. results/). Files are
    split into models as `result_sets` says. Queries without an answer are left out and
    reported, or scored wrong with `missing_as_wrong` (as the official code scores a None
    response).
    """
    paths = _paths(results)
    if not paths:
        raise EvalDataError("no results given")
    return [_score_model(model, files, source, anno, missing_as_wrong) for model, files, source in result_sets(paths)]


def _paths(results: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    return [Path(p) for p in ([results] if isinstance(results, (str, os.PathLike)) else results)]


def _score_model(model: str, files: list[Path], source: str, anno: str | os.PathLike | None,
                 missing_as_wrong: bool) -> Report:
    answer_files = [f for f in files if f.suffix == ".jsonl"]
    if answer_files and len(answer_files) < len(files):
        raise EvalDataError(f"{source}: mix of answers (.jsonl) and official results (.json); score them separately")
    if not answer_files:
        return accuracy_report(BENCHMARK, official_outcomes(files), CATEGORIES, average="macro",
                               titles=CATEGORY_TITLES, source=source, model=model)
    if anno is None:
        raise EvalDataError(f"{source}: answers files need the annotation file (--anno ovo_bench_new.json)")
    outcomes, notes = answer_outcomes(answer_files, anno, missing_as_wrong=missing_as_wrong)
    return accuracy_report(BENCHMARK, outcomes, CATEGORIES, average="macro",
                           titles=CATEGORY_TITLES, source=source, notes=notes, model=model)


def official_outcomes(files: Iterable[str | os.PathLike]) -> list[tuple[str, bool]]:
    """(task, correct) per MC question and per forward probe of official raw output files."""
    outcomes: list[tuple[str, bool]] = []
    for path in files:
        data = read_json(path)
        if not isinstance(data, dict) or not set(RESULT_SECTIONS) & set(data):
            raise EvalDataError(f"{path}: not an OVO-Bench results file (expected keys {', '.join(RESULT_SECTIONS)})")
        try:
            for section in ("backward", "realtime"):
                for item in data.get(section, []):
                    outcomes.append((item["task"], score_multiple_choice(item.get("response"), item["ground_truth"])))
            for item in data.get("forward", []):
                for probe in item["test_info"]:
                    if item["task"] == "REC":
                        correct = score_count(probe.get("response"), probe["count"])
                    else:
                        correct = score_yes_no(probe.get("response"), yes_no_answer(probe["type"]))
                    outcomes.append((item["task"], correct))
        except (KeyError, TypeError, ValueError) as exc:
            raise EvalDataError(f"{path}: malformed result item ({exc!r})") from None
    return outcomes


def answer_outcomes(
    answer_files: Iterable[str | os.PathLike],
    anno: str | os.PathLike,
    *,
    missing_as_wrong: bool = False,
) -> tuple[list[tuple[str, bool, str, str]], list[str]]:
    """(task, correct, qid, video) per answered query, and notes on answers/queries that did not
    match. The qid and video let the report bootstrap over videos and pair two runs.

    Only tasks with at least one answer are scored unless `missing_as_wrong`, which scores
    every query of the benchmark, unanswered ones as wrong.
    """
    queries = {q.qid: q for q in load_ovo_bench(anno)}
    answers: dict[str, dict] = {}
    for path in answer_files:
        answers.update(read_answer_file(path))
    stray = sorted(set(answers) - set(queries))
    if len(stray) == len(answers):
        raise EvalDataError(f"none of the {len(answers)} answers match a query of {anno} (qids like {stray[0]!r})")
    answered_tasks = {queries[qid].task for qid in answers if qid in queries}
    outcomes, missing = [], []
    for qid, query in queries.items():
        if qid in answers:
            outcomes.append((query.task, is_correct(query, answers[qid].get("response")), qid, query.video))
        elif missing_as_wrong:
            outcomes.append((query.task, False, qid, query.video))
            missing.append(qid)
        elif query.task in answered_tasks:
            missing.append(qid)
    notes = []
    if missing:
        verb = "scored wrong" if missing_as_wrong else "left out"
        notes.append(f"{len(missing)} queries have no answer ({verb})")
    not_run = [t for t in TASKS if t not in answered_tasks]
    if not_run and not missing_as_wrong:
        notes.append(f"tasks without answers: {', '.join(not_run)}")
    if stray:
        notes.append(f"{len(stray)} answers match no query of {anno} (ignored)")
    return outcomes, notes


def result_sets(paths: Sequence[Path]) -> list[tuple[str, list[Path], str]]:
    """(model, files, source) per model named by `paths`, in the order given.

    A directory holding result files is one folder of results, a directory without any stands
    for those of its subdirectories that hold some; a file is taken as it is. A folder's files
    are one model's, named by the folder (as the official score.py's --model names it), unless
    their names (<model>_<tasks>_offline.json) name several models: then they are split by that
    name, and a file not named so is refused. Where two folders give the same name, the folder
    as given names the model.
    """
    folders: dict[Path, dict[Path, tuple[Path, str]]] = {}  # folder -> resolved file -> (file as given, source)
    for path in paths:
        if not path.exists():
            raise EvalDataError(f"{path}: no such file or directory")
        if path.is_file():
            folders.setdefault(path.resolve().parent, {}).setdefault(path.resolve(), (path, str(path)))
            continue
        subfolders = [path] if _result_files(path) else [d for d in sorted(path.iterdir()) if _result_files(d)]
        if not subfolders:
            raise EvalDataError(f"{path}: no result files (*.json or *.jsonl) in this directory or its subdirectories")
        for folder in subfolders:
            for file in _result_files(folder):
                folders.setdefault(folder.resolve(), {}).setdefault(file.resolve(), (file, str(folder)))
    models: list[tuple[str, list[tuple[Path, str]]]] = []
    for folder, entries in folders.items():
        names = {file: _model_name(file) for file, _ in entries.values()}
        if len(set(names.values()) - {None}) <= 1:
            models.append((folder.name, list(entries.values())))
            continue
        unnamed = [file for file, name in names.items() if name is None]
        if unnamed:
            raise EvalDataError(f"{unnamed[0]}: cannot tell which model's results these are (its folder holds "
                                "files <model>_<tasks>_offline.json of several models); give each model a folder")
        for name in dict.fromkeys(names.values()):
            models.append((name, [entry for entry in entries.values() if names[entry[0]] == name]))
    labels = [name for name, _ in models]
    sets = []
    for name, entries in models:
        folder = entries[0][0].parent
        if labels.count(name) > 1:
            name = str(folder if folder.name == name else folder / name)
        sets.append((name, [file for file, _ in entries], ", ".join(dict.fromkeys(source for _, source in entries))))
    return sets


def _result_files(folder: Path) -> list[Path]:
    """A folder's answers (*.jsonl) or, when it has none, its official results (*.json)."""
    if not folder.is_dir():
        return []
    return list(iter_answer_files([folder])) or sorted(folder.glob("*.json"))


def _model_name(file: Path) -> str | None:
    """The model of an official file name <model>_<tasks>_offline.json (else None)."""
    match = OFFICIAL_NAME.fullmatch(file.name)
    return match["model"] if match else None
