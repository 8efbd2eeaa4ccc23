"""The HTTP API with a client (Starlette's TestClient, and a real uvicorn server for a client that
leaves): streams added, read, asked and removed; the OpenAI-style endpoint, plain and SSE; every
bad request a 4xx with one line of JSON; the token; a client that disconnects."""

import json
import socket
import time

import cv2
import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from stc.integrations.serve.app import create_app  # noqa: E402
from stc.integrations.serve.streams import ENDED  # noqa: E402
from tests.serve.fakes import RunningServer, manager, wait_for  # noqa: E402
from tests.tiny import tiny_llava, tiny_processor  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_llava()


@pytest.fixture
def streams(model, tmp_path):
    m = manager(model, tiny_processor(), media_root=tmp_path)
    yield m
    m.close()


@pytest.fixture
def client(streams):
    with TestClient(create_app(streams), raise_server_exceptions=False) as c:
        yield c


def _ended(client, stream_id):
    wait_for(lambda: client.get(f"/v1/streams/{stream_id}").json()["state"] == ENDED, what="the stream's end")


def test_a_stream_added_read_asked_and_removed(client):
    created = client.post("/v1/streams", json={"source": "rtsp://fake/file/5", "name": "door", "keep_ratio": 0.5})
    assert created.status_code == 201 and created.json()["id"] == "door"
    assert created.json()["config"]["keep_ratio"] == 0.5
    _ended(client, "door")
    listed = client.get("/v1/streams").json()["streams"]
    assert [s["id"] for s in listed] == ["door"]
    figures = client.get("/v1/streams/door/figures").json()
    assert figures["frames"] == 5 and figures["dropped_frames"] == 0 and figures["memory_bytes"] > 0
    assert {"ingest_fps", "vit_tokens_reused", "llm_tokens_kept", "memory_budget"} <= set(figures)
    reply = client.post("/v1/streams/door/ask", json={"question": "what is in the video ?", "max_new_tokens": 2}).json()
    assert reply["frames_seen"] == 5 and reply["stream_time"] == pytest.approx(1.0) and 1 <= reply["tokens"] <= 2
    assert reply["latency_s"] > 0 and isinstance(reply["answer"], str)
    picture = client.get("/v1/streams/door/frame.jpg?heatmap=1&height=240")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(picture.content, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[0] == 240
    assert client.get("/v1/models").json()["data"][0]["id"] == "door"
    assert client.delete("/v1/streams/door").json() == {"removed": "door"}
    assert client.get("/v1/streams/door").status_code == 404


def test_chat_completions_name_the_stream_plain_and_streamed(client):
    client.post("/v1/streams", json={"source": "rtsp://fake/file/4", "name": "cam"})
    _ended(client, "cam")
    asked = {"model": "cam", "messages": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": [{"type": "text", "text": "what is in the video ?"}]}],
             "max_tokens": 3}
    plain = client.post("/v1/chat/completions", json=asked).json()
    assert plain["object"] == "chat.completion" and plain["model"] == "cam"
    answer = plain["choices"][0]["message"]["content"]
    assert plain["choices"][0]["finish_reason"] in ("stop", "length") and plain["stc"]["frames_seen"] == 4
    direct = client.post("/v1/streams/cam/ask", json={"question": "what is in the video ?", "max_new_tokens": 3}).json()
    assert direct["answer"] == answer  # the same question, the same stream: the same greedy answer
    with client.stream("POST", "/v1/chat/completions", json={**asked, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == answer
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]


BAD_REQUESTS = [
    ("GET", "/v1/streams/nobody", None, 404, "no stream 'nobody'"),
    ("DELETE", "/v1/streams/nobody", None, 404, "no stream 'nobody'"),
    ("GET", "/v1/streams/nobody/figures", None, 404, "no stream"),
    ("GET", "/v1/streams/nobody/frame.jpg", None, 404, "no stream"),
    ("POST", "/v1/streams/nobody/ask", {"question": "what ?"}, 404, "no stream"),
    ("POST", "/v1/chat/completions", {"model": "nobody", "messages": [{"role": "user", "content": "what ?"}]}, 404, "no stream"),
    ("POST", "/v1/streams", b"{not json", 400, "not JSON"),
    ("POST", "/v1/streams", b"\xff\xfe", 400, "not JSON"),
    ("POST", "/v1/streams", [1, 2], 400, "must be a JSON object"),
    ("POST", "/v1/streams", {"source": "rtsp://fake/dead/0"}, 400, "cannot open stream"),
    ("POST", "/v1/streams", {"source": "../../etc/passwd"}, 403, "outside the media root"),
    ("POST", "/v1/streams", {"source": "rtsp://fake/file/2", "update_ratio": 0}, 400, "update_ratio must be in"),
    ("POST", "/v1/streams", {"source": "rtsp://fake/file/2", "sample_fps": -1}, 400, "sample_fps must be > 0"),
    ("POST", "/v1/streams", {"source": "rtsp://fake/file/2", "memory_budget": "lots"}, 400, "memory_budget must be"),
    ("POST", "/v1/streams", {"source": "rtsp://fake/file/2", "pipeline": True}, 400, "unknown field 'pipeline'"),
    ("POST", "/v1/streams", b"x" * 70000, 400, "larger than"),
    ("POST", "/v1/streams/s/ask", {"question": ""}, 400, "non-empty string"),
    ("POST", "/v1/streams/s/ask", {"question": "what ?", "max_new_tokens": 10**6}, 400, "max_new_tokens must be"),
    ("POST", "/v1/streams/s/ask", {"question": "what ?", "since": "yesterday"}, 400, "since must be"),
    ("POST", "/v1/streams/s/ask", {"question": "what ?", "temperature": 1}, 400, "unknown field 'temperature'"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "what ?"}]}, 400, "model must name a stream"),
    ("POST", "/v1/chat/completions", {"model": "s", "messages": []}, 400, "messages must be"),
    ("POST", "/v1/chat/completions", {"model": "s", "messages": [{"role": "system", "content": "x"}]}, 400, "no user message"),
    ("POST", "/v1/chat/completions", {"model": "s", "messages": [{"role": "user", "content": "what ?"}], "max_tokens": 0},
     400, "max_tokens must be"),
    ("POST", "/v1/chat/completions", {"model": "s", "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
     400, "stream must be"),
    ("GET", "/v1/streams/s/frame.jpg?height=5", None, 400, "height must be"),
    ("POST", "/v1/streams", {"source": "rtsp://fake/file/2", "name": "s"}, 409, "a stream named 's' exists"),
    ("GET", "/v1/nothing", None, 404, "no such endpoint"),
    ("PUT", "/v1/streams", {}, 405, "method not allowed"),
]


@pytest.mark.parametrize("method, path, body, status, message", BAD_REQUESTS, ids=[f"{r[0]} {r[1]} {r[4]}" for r in BAD_REQUESTS])
def test_every_bad_request_is_a_4xx_with_one_line_of_json(client, method, path, body, status, message):
    client.post("/v1/streams", json={"source": "rtsp://fake/file/2", "name": "s"})
    content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    response = client.request(method, path, content=content)
    assert response.status_code == status
    error = response.json()
    assert list(error) == ["error"] and message in error["error"] and "\n" not in error["error"]
    assert "Traceback" not in response.text


def test_a_url_that_disconnects_is_shown_ended_and_still_answers(client):
    client.post("/v1/streams", json={"source": "rtsp://fake/live/6", "name": "cam"})
    _ended(client, "cam")
    shown = client.get("/v1/streams/cam").json()
    assert shown["live_source"] and "stopped delivering frames" in shown["end_message"]
    frames = shown["figures"]["frames"]
    assert frames >= 1
    reply = client.post("/v1/streams/cam/ask", json={"question": "what is in the video ?", "max_new_tokens": 2})
    assert reply.status_code == 200 and reply.json()["frames_seen"] == frames


def test_an_internal_error_is_a_500_without_a_traceback(client, streams, monkeypatch):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(streams, "list", broken)
    response = client.get("/v1/streams")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (RuntimeError); see the server's log"}


def test_with_a_token_every_request_but_the_page_needs_it(streams):
    with TestClient(create_app(streams, token="s3cret")) as client:
        assert client.get("/").status_code == 200 and "<title>stc serve</title>" in client.get("/").text
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = client.get("/v1/streams", headers=headers)
            assert response.status_code == 401 and "token" in response.json()["error"]
        assert client.post("/v1/streams", json={"source": "rtsp://fake/file/2"}).status_code == 401
        assert streams.list() == []
        assert client.get("/v1/streams", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def _post_and_leave(port: int, path: str, body: dict, asked) -> None:
    """Send a request, wait until the server has handed its question to the manager (it then waits
    for the busy model), and close the connection."""
    data = json.dumps(body).encode()
    asked.clear()
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        assert asked.wait(30), "the server never passed the question on"


def test_a_client_that_leaves_before_its_answer_costs_nothing(streams, monkeypatch):
    import threading

    import httpx

    asked, ask = threading.Event(), streams.ask

    def noted_ask(*args, **kwargs):
        asked.set()
        return ask(*args, **kwargs)

    monkeypatch.setattr(streams, "ask", noted_ask)

    with RunningServer(streams) as server:
        stream = streams.add({"source": "rtsp://fake/file/3", "name": "s"})
        wait_for(lambda: stream.state == ENDED, what="the stream's end")
        with streams.shared.lock:  # the model is busy while both clients ask, and leave
            _post_and_leave(server.port, "/v1/streams/s/ask", {"question": "what ?"}, asked)
            _post_and_leave(server.port, "/v1/chat/completions",
                            {"model": "s", "stream": True, "messages": [{"role": "user", "content": "what ?"}]}, asked)
            time.sleep(2.0)  # the server sees both disconnects (it polls every 50 ms) while the model is busy
        wait_for(lambda: streams.cancelled_questions == 2, timeout=30, what="both questions cancelled")
        assert stream.questions_answered == 0
        reply = httpx.post(f"{server.url}/v1/streams/s/ask", json={"question": "what ?"}, timeout=30)
        assert reply.status_code == 200 and reply.json()["frames_seen"] == 3


def _sse_events(response) -> list[dict]:
    events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_sse_sends_the_answer_in_pieces_as_it_is_decoded(client):
    client.post("/v1/streams", json={"source": "rtsp://fake/file/4", "name": "cam"})
    _ended(client, "cam")
    asked = {"model": "cam", "messages": [{"role": "user", "content": "what is in the video ?"}], "max_tokens": 12}
    answer = client.post("/v1/chat/completions", json=asked).json()["choices"][0]["message"]["content"]
    with client.stream("POST", "/v1/chat/completions", json={**asked, "stream": True}) as response:
        chunks = _sse_events(response)
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(contents) >= 3 and all(contents) and "".join(contents) == answer  # one chunk per piece
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["stc"]["frames_seen"] == 4


@pytest.mark.parametrize("path, streamed", [("/v1/chat/completions", True), ("/v1/streams/s/ask", False)],
                         ids=["sse", "plain"])
def test_a_client_that_leaves_mid_answer_stops_the_decoding(streams, path, streamed):
    with RunningServer(streams) as server:
        stream = streams.add({"source": "rtsp://fake/file/3", "name": "s"})
        wait_for(lambda: stream.state == ENDED, what="the stream's end")
        session, passes = stream.session, []
        session.eos_ids = set()  # the answer would run to its token limit
        run = session.driver.run

        def slow_run(*args, **kwargs):  # 20 ms per LLM pass: 200 tokens take 4 s
            passes.append(1)
            time.sleep(0.02)
            return run(*args, **kwargs)

        session.driver.run = slow_run
        question = {"model": "s", "stream": True, "max_tokens": 200, "messages": [{"role": "user", "content": "what ?"}]}
        body = json.dumps(question if streamed else {"question": "what ?", "max_new_tokens": 200}).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as connection:
            connection.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            if streamed:  # leave once a piece of text came
                received = b""
                while b'"content": "' not in received.split(b'"role": "assistant"', 1)[-1]:
                    data = connection.recv(4096)
                    assert data, "the server closed the connection before any text"
                    received += data
            else:  # leave once the decoding is under way
                wait_for(lambda: len(passes) > 10, what="the decoding to start")
        wait_for(lambda: streams.cancelled_questions == 1, timeout=30, what="the question cancelled")
        stopped = len(passes)
        time.sleep(0.3)
        assert len(passes) == stopped < 100 and stream.questions_answered == 0
        del session.driver.run
