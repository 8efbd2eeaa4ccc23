"""StreamingBench: annotation files to queries, and the official scoring rules.

Source of truth: THUNLP-MT/StreamingBench (src/benchmark/StreamingBench.py, StreamingBenchSQA.py,
StreamingBenchProactive.py for prompts and protocol; src/data/count.py for scoring). Prompt
texts below are the repository's templates verbatim (benchmark data, not our wording).

Files (each a JSON list of entries {video_path, video_categories, time, questions: [...]}):
- questions_real.json: Real-Time Visual Understanding, 10 tasks, 2,500 questions.
- questions_omni.json: Omni-Source Understanding (ER, SCU, SD, MA: these need the audio track)
  and the Contextual tasks ACU and MCU (video only).
- questions_sqa.json: Sequential QA; a list per video. Every question's prompt carries the
  earlier questions of the same video (in file order) with their ground-truth answers.
- questions_proactive.json: Proactive Output; the model is polled every second (see below).

Queries: qid = f"{subset}-{n}" with n the question's position in its file; time = the
question's time_stamp in seconds; video = video_path without its leading "./". The official
layout keeps every video in a `videos/` folder next to the question files (src/data/videos after
scripts/preprocess.sh), so --video-root is the folder that holds `videos/`.

Context: "all" (clip [0, t], most papers) or N seconds (clip [t-N, t]: Query.start = max(0, t-N);
the leaderboard's main setting is 60).

Audio is out of scope for this project: by default the loader skips the audio tasks
(AUDIO_TASKS) with a warning; `include_audio_tasks=True` keeps them (answered from video only,
marked extra["needs_audio"]).

Proactive protocol (official): the clip starts at the question's time_stamp; at every poll
time t = time_stamp+1, +2, ... up to ground_truth_time_stamp+4 the model gets the poll prompt
(Query.prompt) on clip [time_stamp, t]. The first reply containing "yes" (see
`proactive_said_yes`) triggers one more call at the same t with extra["answer_prompt"]; the
runner writes that reply as Answer.response and t as Answer.time. If no poll says yes, it
writes the last poll's reply and time. Query.time is the first poll time, Query.start the
time_stamp, extra["poll_times"] every poll time.

Scoring (official count.py):
- Multiple choice: the first character of the response as written == answer letter (no
  stripping: " A" is wrong). Unanswered questions (no response, or an empty one) are left out,
  as count.py does. `lenient=True` strips whitespace first (not the official rule; the report
  says so).
- Proactive: correct iff the reply time is within +-2 s of ground_truth_time_stamp and
  ground_truth_output appears in the reply (count.py's "answer_correct").
- Per-task accuracy; category and overall accuracy over all their questions (count.py's
  "total" row is a plain share of questions, not a mean of tasks).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from stc.eval.answer_files import EvalDataError, read_answer_file, read_json, response_text
from stc.eval.records import Query, iter_answer_files
from stc.eval.reporting import Report, accuracy_report
from stc.integrations.engine import prompt as engine_prompt

BENCHMARK = "StreamingBench"
SUBSETS = ("real", "omni", "sqa", "proactive")

# task_type in the annotation files -> the paper's abbreviation.
TASK_CODES = {
    "Object Recognition": "OP",
    "Causal Reasoning": "CR",
    "Clips Summarize": "CS",
    "Attribute Recognition": "ATP",
    "Event Understanding": "EU",
    "Text-Rich Understanding": "TR",
    "Prospective Reasoning": "PR",
    "Spatial Understanding": "SU",
    "Action Recognition": "ACP",
    "Counting": "CT",
    "Emotion Recognition": "ER",
    "Scene Understanding": "SCU",
    "Source Discrimination": "SD",
    "Multimodal Alignment": "MA",
    "Anomaly Context Understanding": "ACU",
    "Misleading Context Understanding": "MCU",
    "Sequential Question Answering": "SQA",
    "Proactive Output": "PO",
}
CATEGORIES = {
    "Real-Time": ("OP", "CR", "CS", "ATP", "EU", "TR", "PR", "SU", "ACP", "CT"),
    "Omni-Source": ("ER", "SCU", "SD", "MA"),
    "Contextual": ("ACU", "MCU", "SQA", "PO"),
}
CATEGORY_TITLES = {
    "Real-Time": "Real-Time Visual Understanding",
    "Omni-Source": "Omni-Source Understanding",
    "Contextual": "Contextual Understanding",
}
AUDIO_TASKS = ("ER", "SCU", "SD", "MA")
PROACTIVE_WINDOW_S = 2  # a proactive reply counts within this many seconds of the ground truth
PROACTIVE_POLL_AFTER_S = 4  # polling stops this many seconds after the ground truth

MULTIPLE_CHOICE_PROMPT = (
    "You are an advanced video question-answering AI assistant. You have been provided with some "
    "frames from the video and a multiple-choice question related to the video. Your task is to "
    "carefully analyze the video and provide the best answer to question, choosing from the four "
    "options provided. Respond with only the letter (A, B, C, or D) of the correct option.\n\n"
    "Question: {}\n\nOptions:\n{}\n{}\n{}\n{}"
    "\n\nThe best option is:"
)

SEQUENTIAL_PROMPT = (
    "You are an advanced video question-answering AI assistant. You have been provided with a "
    "video and a multiple-choice question related to the video. Your task is to carefully analyze "
    "the video and the provided context to answer the question, choosing from the four options "
    "provided. Respond with only the letter (A, B, C, or D) of the correct option.\n\n"
    "{}\n\n"
    "Here is the question. Answer it and don't confuse it with the previous conversation.\n"
    "Question: {}\n\nOptions:\n{}\n{}\n{}\n{}\n\nThe best option is:"
)
SEQUENTIAL_CONTEXT_INTRO = (
    "Here are the contextual information related to the video. Please answer the questions based "
    "on the contextual information: "
)
SEQUENTIAL_CONTEXT_TURN = (
    "At timestamp {}, the following question and answer occurred: Question: {}; Options: {}, {}, {}, {}; "
    "Answer: {}; "
)

PROACTIVE_PROMPT = (
    "You are an advanced image question-answering AI assistant. You have been provided with images "
    "and a question related to the images. Your task is to carefully analyze the images and provide "
    "the answer to the question. You need to carefully confirm whether the images content meet the "
    "conditions of the question, and then output the correct content.\n\nQuestion: {}\n\nThe answer is:\n"
)
PROACTIVE_POLL_QUESTION = '{} Is it the right time to output "{}"? You can only answer yes or no.'

# Keys of an annotation question; any other key of a question in a results file holds responses.
ANNOTATION_KEYS = frozenset({
    "task_type", "question", "time_stamp", "answer", "options", "required_ability", "cause",
    "effect", "ground_truth_time_stamp", "ground_truth_output",
})


def parse_time_stamp(text: str) -> int:
    """Seconds of "HH:MM:SS" (or "MM:SS"), summing fields from the right as the official code
    does; the one malformed stamp in questions_real.json, "00:12450", thus reads 12450."""
    try:
        return sum(int(part) * 60**i for i, part in enumerate(reversed(text.split(":"))))
    except (AttributeError, ValueError):
        raise ValueError(f"bad time_stamp {text!r}") from None


def lettered_options(options: Sequence[str]) -> list[str]:
    """The four options the official prompt shows, each starting "A. ", "B. ", ...

    Options already lettered are kept (the official templates have four slots, so a 5th+ entry,
    present in a few omni questions split by a stray comma, is not shown); bare ones get letters.
    """
    if len(options) < 4:
        raise ValueError(f"expected 4 options, got {len(options)}")
    if options[0].startswith("A."):
        return list(options[:4])
    return engine_prompt.lettered_options(options[:4], keep_lettered=False)


def proactive_said_yes(response: str) -> bool:
    """Official trigger: the poll reply contains "yes" (any case)."""
    return "yes" in response.strip().lower()


def detect_subset(data: object) -> str:
    """real, omni, sqa or proactive, from a parsed StreamingBench annotation/results file."""
    if not isinstance(data, list) or not data:
        raise ValueError("expected a non-empty JSON list")
    if all(isinstance(item, list) for item in data):
        return "sqa"
    entries = [e for e in data if isinstance(e, dict) and isinstance(e.get("questions"), list)]
    if len(entries) != len(data):
        raise ValueError("entries must be objects with a 'questions' list")
    questions = [q for e in entries for q in e["questions"]]
    if questions and all("ground_truth_time_stamp" in q for q in questions):
        return "proactive"
    real_tasks = {task for task, code in TASK_CODES.items() if code in CATEGORIES["Real-Time"]}
    return "real" if all(q.get("task_type") in real_tasks for q in questions) else "omni"


# ---------------------------------------------------------------------------------------------
# Loading


def load_streamingbench(
    path: str | os.PathLike,
    context: str | int = "all",
    *,
    tasks: Iterable[str] | None = None,
    include_audio_tasks: bool = False,
) -> list[Query]:
    """Queries of one StreamingBench question file (its subset is recognised from the content).

    context: "all" or a number of seconds before the question the model may see.
    tasks: task abbreviations (OP, ATP, ...) to keep; default all.
    include_audio_tasks: keep ER/SCU/SD/MA (needing audio) instead of skipping them.
    """
    context_s = _context_seconds(context)
    wanted = _checked_tasks(tasks)
    data = read_json(path)
    try:
        subset = detect_subset(data)
    except ValueError as exc:
        raise EvalDataError(f"{path}: not a StreamingBench question file ({exc})") from None
    try:
        if subset == "sqa":
            queries = _sequential_queries(data, context_s)
        elif subset == "proactive":
            queries = _proactive_queries(data)
        else:
            queries = _multiple_choice_queries(data, subset, context_s)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise EvalDataError(f"{path}: malformed question ({exc!r})") from None
    queries = [q for q in queries if q.task in wanted]
    audio = [q for q in queries if q.task in AUDIO_TASKS]
    if audio and include_audio_tasks:
        warnings.warn(
            f"{path}: {len(audio)} questions of audio tasks {', '.join(AUDIO_TASKS)} are asked from "
            "the video alone (audio input is out of scope)", stacklevel=2)
    elif audio:
        warnings.warn(
            f"{path}: skipping {len(audio)} questions of audio tasks {', '.join(AUDIO_TASKS)} "
            "(audio input is out of scope; include_audio_tasks=True asks them from the video alone)",
            stacklevel=2)
        queries = [q for q in queries if q.task not in AUDIO_TASKS]
    return queries


def _context_seconds(context: str | int) -> int | None:
    """None for "all", else a positive number of seconds."""
    if context == "all":
        return None
    try:
        seconds = int(context)
    except (TypeError, ValueError):
        seconds = 0
    if seconds <= 0:
        raise ValueError(f'context must be "all" or a positive number of seconds, got {context!r}')
    return seconds


def _checked_tasks(tasks: Iterable[str] | None) -> set[str]:
    codes = set(TASK_CODES.values())
    if tasks is None:
        return codes
    tasks = set(tasks)
    if tasks - codes:
        raise ValueError(f"unknown StreamingBench task(s) {', '.join(sorted(tasks - codes))}; "
                         f"tasks are {', '.join(TASK_CODES.values())}")
    return tasks


def _query(subset: str, number: int, entry: dict, question: dict, context_s: int | None,
           prompt: str, **extra) -> Query:
    time = parse_time_stamp(question["time_stamp"])
    task = TASK_CODES[question["task_type"]]
    return Query(
        qid=f"{subset}-{number}",
        video=_video_path(entry["video_path"]),
        time=float(time),
        prompt=prompt,
        answer=question["answer"],
        task=task,
        kind="mc",
        start=None if context_s is None else float(max(0, time - context_s)),
        extra={"subset": subset, "task_type": question["task_type"], "time_stamp": question["time_stamp"],
               "needs_audio": task in AUDIO_TASKS, **extra},
    )


def _multiple_choice_queries(data: list, subset: str, context_s: int | None) -> list[Query]:
    queries = []
    for entry in data:
        for question in entry["questions"]:
            prompt = MULTIPLE_CHOICE_PROMPT.format(question["question"], *lettered_options(question["options"]))
            queries.append(_query(subset, len(queries), entry, question, context_s, prompt))
    return queries


def _sequential_queries(data: list, context_s: int | None) -> list[Query]:
    """Each question's prompt carries the earlier questions of its video with their answers."""
    queries = []
    for video_entries in data:
        context = ""
        turn = 0
        for entry in video_entries:
            for question in entry["questions"]:
                options = lettered_options(question["options"])
                prompt = SEQUENTIAL_PROMPT.format(context, question["question"], *options)
                queries.append(_query("sqa", len(queries), entry, question, context_s, prompt, turn=turn))
                context = (context or SEQUENTIAL_CONTEXT_INTRO) + SEQUENTIAL_CONTEXT_TURN.format(
                    question["time_stamp"], question["question"], *options, question["answer"])
                turn += 1
    return queries


def _proactive_queries(data: list) -> list[Query]:
    queries = []
    for entry in data:
        for question in entry["questions"]:
            asked = parse_time_stamp(question["time_stamp"])
            truth = parse_time_stamp(question["ground_truth_time_stamp"])
            poll_times = list(range(asked + 1, truth + PROACTIVE_POLL_AFTER_S + 1))
            if not poll_times:
                raise ValueError(f"ground_truth_time_stamp before time_stamp: {question}")
            poll = PROACTIVE_POLL_QUESTION.format(question["question"], question["ground_truth_output"])
            queries.append(Query(
                qid=f"proactive-{len(queries)}",
                video=_video_path(entry["video_path"]),
                time=float(poll_times[0]),
                prompt=PROACTIVE_PROMPT.format(poll),
                answer=question["ground_truth_output"],
                task=TASK_CODES[question["task_type"]],
                kind="yesno",
                start=float(asked),
                extra={
                    "subset": "proactive",
                    "task_type": question["task_type"],
                    "time_stamp": question["time_stamp"],
                    "protocol": "proactive",
                    "poll_times": poll_times,
                    "answer_prompt": PROACTIVE_PROMPT.format(question["question"]),
                    "ground_truth_time": truth,
                    "ground_truth_output": question["ground_truth_output"],
                    "needs_audio": False,
                },
            ))
    return queries


def _video_path(path: str) -> str:
    return path[2:] if path.startswith("./") else path


# ---------------------------------------------------------------------------------------------
# Rules


def score_multiple_choice(response: object, answer: str, lenient: bool = False) -> bool | None:
    """Official rule: first character of the response as written == answer letter (`lenient`:
    of the whitespace-stripped response). None when the question counts as unanswered (no
    response or an empty one)."""
    text = response_text(response)
    if not text:
        return None
    return (text.strip() if lenient else text)[:1] == answer


def _padding_note(responses: Iterable[object], lenient: bool) -> list[str]:
    """A note on multiple-choice responses that start with whitespace, whose score depends on
    the rule (official: wrong; lenient: read after stripping)."""
    padded = sum(1 for r in responses if (response_text(r) or "")[:1].isspace())
    if not padded:
        return []
    if lenient:
        return [f"lenient scoring (not the official rule): {padded} responses starting with whitespace "
                "were read after stripping it"]
    return [f"{padded} responses start with whitespace and are scored wrong, as count.py does "
            "(--lenient strips it)"]


def score_proactive(response: object, reply_time: float, ground_truth_time: float, ground_truth_output: str) -> bool:
    """Official rule: replied within +-2 s of the ground-truth time, with the expected output."""
    text = response_text(response) or ""
    return abs(reply_time - ground_truth_time) <= PROACTIVE_WINDOW_S and ground_truth_output in text


# ---------------------------------------------------------------------------------------------
# Scoring


def score_streamingbench(
    results: str | os.PathLike | Sequence[str | os.PathLike],
    anno: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    *,
    model_key: str | None = None,
    lenient: bool = False,
) -> Report:
    """Score StreamingBench results: official output files or this project's answers JSONL.

    Official outputs are question files with each response stored in the question under the
    model's name (`model_key`; found automatically when the file holds one model). Answers are
    JSONL files of Answer records matched by qid to the queries of the question file(s) `anno`.
    `lenient` strips whitespace before reading the answer letter (not the official rule; the
    report's `scoring` says "lenient").
    """
    paths = [Path(p) for p in ([results] if isinstance(results, (str, os.PathLike)) else results)]
    if not paths:
        raise EvalDataError("no results given")
    source = ", ".join(str(p) for p in paths)
    for path in paths:
        if not path.exists():
            raise EvalDataError(f"{path}: no such file or directory")
    answer_files = [f for f in iter_answer_files(paths) if f.suffix == ".jsonl"]
    official_files = [p for p in paths if p.is_file() and p.suffix != ".jsonl"]
    if answer_files and official_files:
        raise EvalDataError(f"{source}: mix of answers (.jsonl) and official results (.json); score them separately")
    if official_files:
        outcomes, notes, keys = [], [], []
        for path in official_files:
            file_outcomes, unanswered, key, file_notes = official_outcomes(path, model_key, lenient)
            outcomes += file_outcomes
            keys.append(key)
            if unanswered:
                notes.append(f"{path.name}: {unanswered} questions without a {key!r} response (left out)")
            notes += [f"{path.name}: {note}" for note in file_notes]
        models = list(dict.fromkeys(keys))
        if len(models) > 1:
            raise EvalDataError(f"{source}: responses of {len(models)} models ({', '.join(map(repr, models))}); "
                                "score each model separately")
    elif answer_files:
        if anno is None:
            raise EvalDataError(f"{source}: answers files need the question file(s) (--anno questions_real.json)")
        annos = [anno] if isinstance(anno, (str, os.PathLike)) else list(anno)
        outcomes, notes = answer_outcomes(answer_files, annos, lenient)
    else:
        raise EvalDataError(f"{source}: no results (*.json official outputs or *.jsonl answers)")
    return accuracy_report(BENCHMARK, outcomes, CATEGORIES, average="micro", titles=CATEGORY_TITLES,
                           source=source, notes=notes, scoring="lenient" if lenient else "official")


def official_outcomes(path: str | os.PathLike, model_key: str | None = None, lenient: bool = False
                      ) -> tuple[list[tuple[str, bool]], int, str, list[str]]:
    """(task, correct) per answered question of an official output file, the number of
    unanswered questions, the model key used and notes on the responses."""
    data = read_json(path)
    try:
        subset = detect_subset(data)
    except ValueError as exc:
        raise EvalDataError(f"{path}: not a StreamingBench results file ({exc})") from None
    entries = [e for video in data for e in video] if subset == "sqa" else data
    questions = [q for e in entries for q in e["questions"]]
    key = model_key or _only_model_key(path, questions)
    outcomes: list[tuple[str, bool]] = []
    unanswered = 0
    responses = []
    try:
        for question in questions:
            task = TASK_CODES[question["task_type"]]
            if subset == "proactive":
                history = (question.get(key) or {}).get("dialog_history") or []
                if not history:
                    unanswered += 1
                    continue
                last = history[-1]
                truth = parse_time_stamp(question["ground_truth_time_stamp"])
                correct = score_proactive(last["content"], last["time"], truth, question["ground_truth_output"])
                outcomes.append((task, correct))
                continue
            responses.append(question.get(key))
            correct = score_multiple_choice(responses[-1], question["answer"], lenient)
            if correct is None:
                unanswered += 1
            else:
                outcomes.append((task, correct))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise EvalDataError(f"{path}: malformed question or response ({exc!r})") from None
    if not outcomes:
        raise EvalDataError(f"{path}: no responses under model key {key!r}")
    return outcomes, unanswered, key, _padding_note(responses, lenient)


def _only_model_key(path: str | os.PathLike, questions: list[dict]) -> str:
    keys = sorted({k for q in questions for k in q} - ANNOTATION_KEYS)
    if len(keys) != 1:
        found = f"found {', '.join(map(repr, keys))}" if keys else "found none"
        raise EvalDataError(f"{path}: cannot tell which model's responses to score ({found}); pass --model-key")
    return keys[0]


def answer_outcomes(answer_files: Iterable[str | os.PathLike], annos: Sequence[str | os.PathLike],
                    lenient: bool = False) -> tuple[list[tuple[str, bool, str, str]], list[str]]:
    """(task, correct, qid, video) per answered query of answers JSONL files (the qid and video
    let the report bootstrap over videos and pair two runs), and notes on what did not match.

    Every question kept by the loader of `annos` (with all tasks, audio ones included) can be
    matched; queries without an answer are left out, as count.py leaves them out.
    """
    queries: dict[str, Query] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for anno in annos:
            queries.update((q.qid, q) for q in load_streamingbench(anno, include_audio_tasks=True))
    answers: dict[str, dict] = {}
    for path in answer_files:
        answers.update(read_answer_file(path))
    stray = sorted(set(answers) - set(queries))
    if len(stray) == len(answers):
        raise EvalDataError(f"none of the {len(answers)} answers match a question of "
                            f"{', '.join(map(str, annos))} (qids like {stray[0]!r})")
    outcomes: list[tuple[str, bool, str, str]] = []
    unanswered = 0
    responses = []
    for qid, answer in answers.items():
        query = queries.get(qid)
        if query is None:
            continue
        if query.extra.get("protocol") == "proactive":
            try:
                reply_time = float(answer["time"])
            except (KeyError, TypeError, ValueError):
                raise EvalDataError(f"answer {qid!r}: proactive answers need the reply time") from None
            outcomes.append((query.task, score_proactive(answer.get("response"), reply_time,
                                                         query.extra["ground_truth_time"], query.answer),
                             qid, query.video))
            continue
        responses.append(answer.get("response"))
        correct = score_multiple_choice(responses[-1], query.answer, lenient)
        if correct is None:
            unanswered += 1
        else:
            outcomes.append((query.task, correct, qid, query.video))
    answered_tasks = {queries[qid].task for qid in answers if qid in queries}
    missing = sum(1 for qid, q in queries.items() if qid not in answers and q.task in answered_tasks)
    notes = []
    if unanswered:
        notes.append(f"{unanswered} empty responses (left out)")
    if missing:
        notes.append(f"{missing} questions have no answer (left out)")
    if stray:
        notes.append(f"{len(stray)} answers match no question (ignored)")
    return outcomes, notes + _padding_note(responses, lenient)
