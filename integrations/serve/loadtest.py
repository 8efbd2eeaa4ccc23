"""A load test of a running `stc serve`: client threads ask questions of its streams while frames
flow, and a sampler records the server's RSS and each stream's memory (docs/serve_load.py runs
it on a `stc serve` subprocess; tests/serve/test_load.py runs a short one in-process).

Every question ends in one of three ways, counted: answered (a 200 with an answer; for SSE, the
chunks and `[DONE]`), refused (a 4xx/5xx whose body is one line of JSON `{"error": ...}`, or an
SSE `{"error": ...}` event), or lost (no response within the timeout, a dropped connection, or a
response of any other shape). `failures(summary)` names what breaks the promise: a question
lost, a stream whose `memory_bytes` exceeded its `memory_budget` in a sample, a stream that did
not stay live, a sample the server did not answer. The figures are read after each ingestion
(after the budget's eviction), so a sample sees what a client sees.

Needs httpx (the serve extra). Nothing is resumable: a run that stops is run again.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from dataclasses import asdict, dataclass, field

import httpx

ENDPOINT_CYCLE = ("ask", "chat", "ask", "sse", "chat")  # question i uses ENDPOINT_CYCLE[i % 5]: 40% / 40% / 20%
ENDPOINTS = ("ask", "chat", "sse")
QUESTIONS = ("what colour is the circle ?", "what shapes are in the video ?", "which letters did you see ?",
             "what is in the video ?", "which digit appeared first ?")
STREAM_FIGURES = ("frames", "memory_bytes", "memory_budget", "dropped_frames", "evicted_blocks")


@dataclass(frozen=True)
class LoadPlan:
    streams: int = 4
    clients: int = 8
    questions: int = 200
    seconds: float = 600.0
    stream_body: dict = field(default_factory=lambda: {"source": "synthetic"})  # each stream's POST body (plus a name)
    max_new_tokens: int = 16
    texts: tuple[str, ...] = QUESTIONS  # question i asks texts[i % len(texts)]
    sample_s: float = 5.0
    timeout_s: float = 120.0  # a question with no response by then is lost

    def __post_init__(self):
        for name in ("streams", "clients", "questions"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not self.seconds > 0 or not self.sample_s > 0 or not self.timeout_s > 0:
            raise ValueError("seconds, sample_s and timeout_s must be > 0")


@dataclass
class Outcome:
    index: int
    endpoint: str
    stream: str
    sent_s: float  # since the start of the run
    kind: str = "lost"  # answered, refused or lost
    status: int | None = None
    latency_s: float | None = None
    detail: str = ""  # the refusal's error, or why it is lost


def stream_names(count: int) -> list[str]:
    return [f"load-{n + 1}" for n in range(count)]


def add_streams(client: httpx.Client, plan: LoadPlan) -> list[str]:
    names = stream_names(plan.streams)
    for name in names:
        reply = client.post("/v1/streams", json={**plan.stream_body, "name": name})
        if reply.status_code != 201:
            raise RuntimeError(f"adding stream {name} failed: {reply.status_code} {reply.text.strip()}")
    return names


def ask_once(client: httpx.Client, outcome: Outcome, question: str, max_new_tokens: int) -> Outcome:
    """Send one question on `outcome.endpoint` and fill in how it ended."""
    started = time.perf_counter()
    try:
        if outcome.endpoint == "ask":
            response = client.post(f"/v1/streams/{outcome.stream}/ask",
                                   json={"question": question, "max_new_tokens": max_new_tokens})
            _judge_json(outcome, response, lambda body: isinstance(body.get("answer"), str))
        else:
            body = {"model": outcome.stream, "max_tokens": max_new_tokens,
                    "messages": [{"role": "user", "content": question}], "stream": outcome.endpoint == "sse"}
            if outcome.endpoint == "chat":
                response = client.post("/v1/chat/completions", json=body)
                _judge_json(outcome, response, lambda b: isinstance(b["choices"][0]["message"]["content"], str))
            else:
                with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    if response.status_code != 200:
                        response.read()
                        _judge_json(outcome, response, lambda b: False)
                    else:
                        _judge_events(outcome, [line for line in response.iter_lines() if line.startswith("data: ")])
    except httpx.HTTPError as exc:
        outcome.kind, outcome.detail = "lost", f"{type(exc).__name__}: {exc}"
    outcome.latency_s = time.perf_counter() - started
    return outcome


def _judge_json(outcome: Outcome, response: httpx.Response, is_answer) -> None:
    outcome.status = response.status_code
    try:
        body = response.json()
    except ValueError:
        outcome.kind, outcome.detail = "lost", f"{response.status_code} without JSON: {response.text[:80]!r}"
        return
    if response.status_code == 200:
        try:
            answered = is_answer(body)
        except (KeyError, IndexError, TypeError):
            answered = False
        outcome.kind, outcome.detail = ("answered", "") if answered else ("lost", f"200 of another shape: {body!r:.80}")
    elif response.status_code >= 400 and _one_line_error(body):
        outcome.kind, outcome.detail = "refused", body["error"]
    else:
        outcome.kind, outcome.detail = "lost", f"{response.status_code}: {response.text[:80]!r}"


def _judge_events(outcome: Outcome, lines: list[str]) -> None:
    outcome.status = 200
    events = [line.removeprefix("data: ") for line in lines]
    try:
        last = None if not events or events[-1] == "[DONE]" else json.loads(events[-1])
    except ValueError:
        last = None
    if len(events) >= 2 and events[-1] == "[DONE]":
        outcome.kind = "answered"
    elif isinstance(last, dict) and _one_line_error(last):
        outcome.kind, outcome.detail = "refused", last["error"]
    else:
        outcome.kind, outcome.detail = "lost", f"SSE ended after {len(events)} events without [DONE]"


def _one_line_error(body) -> bool:
    return isinstance(body, dict) and list(body) == ["error"] and isinstance(body["error"], str) and "\n" not in body["error"]


def read_rss(pid: int) -> int:
    """The process's resident set size in bytes (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


class LoadTest:
    """`run()`: add the plan's streams to the server at `url` (its process `pid`, for the RSS),
    ask the questions from the client threads at evenly spread times while sampling, and return
    (outcomes, samples). `progress(line)` gets a line per sample."""

    def __init__(self, url: str, pid: int, plan: LoadPlan, headers: dict | None = None, progress=print):
        self.url, self.pid, self.plan, self.headers, self.progress = url, pid, plan, headers or {}, progress
        self.outcomes: list[Outcome] = []
        self.samples: list[dict] = []
        self._lock = threading.Lock()
        self._start = 0.0

    def _client(self, timeout: float) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def run(self) -> tuple[list[Outcome], list[dict]]:
        with self._client(60.0) as client:
            names = add_streams(client, self.plan)
        self._start = time.perf_counter()
        done = threading.Event()
        sampler = threading.Thread(target=self._sample_until, args=(done,), name="load-sampler", daemon=True)
        sampler.start()
        clients = [threading.Thread(target=self._ask_from, args=(c, names), name=f"load-client-{c}", daemon=True)
                   for c in range(self.plan.clients)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        remaining = self.plan.seconds - (time.perf_counter() - self._start)
        if remaining > 0:  # frames flow for the whole run even if the questions finished early
            time.sleep(remaining)
        done.set()
        sampler.join()
        self._sample()
        return sorted(self.outcomes, key=lambda o: o.index), self.samples

    def _ask_from(self, number: int, names: list[str]) -> None:
        plan, spacing = self.plan, self.plan.seconds / self.plan.questions
        with self._client(plan.timeout_s) as client:
            for index in range(number, plan.questions, plan.clients):
                wait = index * spacing - (time.perf_counter() - self._start)
                if wait > 0:
                    time.sleep(wait)
                outcome = Outcome(index, ENDPOINT_CYCLE[index % len(ENDPOINT_CYCLE)], names[index % len(names)],
                                  time.perf_counter() - self._start)
                ask_once(client, outcome, plan.texts[index % len(plan.texts)], plan.max_new_tokens)
                with self._lock:
                    self.outcomes.append(outcome)

    def _sample_until(self, done: threading.Event) -> None:
        while not done.wait(0 if not self.samples else self.plan.sample_s):
            self._sample()

    def _sample(self) -> None:
        now = time.perf_counter() - self._start
        sample = {"t_s": round(now, 2), "rss_bytes": None, "streams": {}, "error": None}
        try:
            sample["rss_bytes"] = read_rss(self.pid)
            with self._client(30.0) as client:
                reply = client.get("/v1/streams")
            for stream in reply.json()["streams"]:
                sample["streams"][stream["id"]] = {"state": stream["state"], "end_message": stream["end_message"],
                                                   **{k: stream["figures"].get(k) for k in STREAM_FIGURES}}
        except (OSError, RuntimeError, httpx.HTTPError, ValueError, KeyError) as exc:  # the server gone or broken
            sample["error"] = f"{type(exc).__name__}: {exc}"
        self.samples.append(sample)
        with self._lock:
            counts = {kind: sum(o.kind == kind for o in self.outcomes) for kind in ("answered", "refused", "lost")}
        memory = " ".join(f"{s['memory_bytes'] or 0:,}/{s['memory_budget'] or 0:,}" for s in sample["streams"].values())
        self.progress(f"[{now:6.0f} s] questions {sum(counts.values())}/{self.plan.questions} "
                      f"(answered {counts['answered']}, refused {counts['refused']}, lost {counts['lost']}) "
                      f"rss {(sample['rss_bytes'] or 0) / 2**20:.0f} MiB  memory {memory}" + (
                          f"  sample failed: {sample['error']}" if sample["error"] else ""))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(outcomes: list[Outcome], samples: list[dict], plan: LoadPlan) -> dict:
    kinds = {kind: sum(o.kind == kind for o in outcomes) for kind in ("answered", "refused", "lost")}
    latency = {}
    for endpoint in ENDPOINTS:
        times = [o.latency_s for o in outcomes if o.endpoint == endpoint and o.kind == "answered"]
        latency[endpoint] = {"answered": len(times), **({"p50_s": percentile(times, 50), "p95_s": percentile(times, 95),
                                                          "max_s": max(times)} if times else {})}
    rss = [s["rss_bytes"] for s in samples if s["rss_bytes"] is not None]
    streams = {}
    for name in stream_names(plan.streams):
        seen = [s["streams"][name] for s in samples if name in s["streams"]]
        memory = [f["memory_bytes"] or 0 for f in seen]
        last = seen[-1] if seen else {}
        streams[name] = {"memory_max": max(memory, default=0), "memory_budget": last.get("memory_budget"),
                         "samples_over_budget": sum(1 for f in seen if f["memory_budget"] is not None
                                                    and (f["memory_bytes"] or 0) > f["memory_budget"]),
                         "frames": last.get("frames"), "dropped_frames": last.get("dropped_frames"),
                         "evicted_blocks": last.get("evicted_blocks"), "state": last.get("state"),
                         "end_message": last.get("end_message"), "samples": len(seen)}
    return {
        "plan": asdict(plan),
        "sent": len(outcomes), **kinds,
        "refusals": sorted({o.detail for o in outcomes if o.kind == "refused"}),
        "lost_examples": [asdict(o) for o in outcomes if o.kind == "lost"][:10],
        "latency": latency,
        "rss": {"start": rss[0], "end": rss[-1], "max": max(rss)} if rss else {},
        "streams": streams,
        "failed_samples": sum(1 for s in samples if s["error"]),
        "seconds": samples[-1]["t_s"] if samples else 0.0,
    }


def failures(summary: dict) -> list[str]:
    """What the run promised and did not keep (empty: it passed)."""
    found = []
    if summary["sent"] != summary["plan"]["questions"] or summary["sent"] != summary["answered"] + summary["refused"] + summary["lost"]:
        found.append(f"{summary['plan']['questions']} questions planned, {summary['sent']} sent")
    if summary["lost"]:
        found.append(f"{summary['lost']} questions lost (no response, or not answered nor refused)")
    for name, stream in summary["streams"].items():
        if stream["memory_budget"] is None:
            found.append(f"stream {name} has no memory budget")
        elif stream["samples_over_budget"]:
            found.append(f"stream {name}: memory over its budget in {stream['samples_over_budget']} samples "
                         f"(max {stream['memory_max']} > {stream['memory_budget']})")
        if stream["state"] != "live":
            found.append(f"stream {name} is {stream['state']} at the end, not live: {stream['end_message']}")
    if summary["failed_samples"]:
        found.append(f"{summary['failed_samples']} samples of /v1/streams failed")
    return found


def write_samples_csv(samples: list[dict], path) -> None:
    """One row per sample and stream: time, RSS, the stream's state and figures."""
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["t_s", "rss_bytes", "stream", "state", *STREAM_FIGURES])
        for sample in samples:
            for name, figures in sorted(sample["streams"].items()) or [("", {})]:
                writer.writerow([sample["t_s"], sample["rss_bytes"], name, figures.get("state", ""),
                                 *(figures.get(k, "") for k in STREAM_FIGURES)])


def write_summary_json(summary: dict, path) -> None:
    with open(path, "w") as out:
        json.dump(summary, out, indent=2)
        out.write("\n")
