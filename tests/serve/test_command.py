"""`stc serve` refuses unsafe or impossible start-ups in one line, exit 2, before loading a model."""

import sys

import pytest

from stc.cli import main
from stc.cli.serve import is_loopback
from tests.serve.fakes import wait_for


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("0.0.0.0", False), ("192.168.1.5", False), ("example.org", False)])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_a_non_loopback_bind_without_a_token_is_refused(capsys, monkeypatch):
    monkeypatch.delenv("STC_SERVE_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--host 0.0.0.0 is not a loopback address: give --token" in err


def test_a_missing_serve_extra_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "starlette", None)  # import starlette now raises ImportError
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err == "stc serve: error: the server needs the serve extra: pip install 'stc-videollm[serve]'\n"


def test_a_media_root_that_is_not_a_folder_is_one_line(capsys, tmp_path):
    pytest.importorskip("starlette")
    assert main(["serve", "--media-root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a folder" in err


def test_synthetic_streams_of_the_command_each_show_their_own_episode(monkeypatch, capsys):
    pytest.importorskip("starlette")
    uvicorn = pytest.importorskip("uvicorn")
    from starlette.testclient import TestClient

    served = {}

    def serve(app, **kwargs):  # instead of serving: read the streams through the API once both have frames
        with TestClient(app) as client:
            def read():
                served["streams"] = client.get("/v1/streams").json()["streams"]
                return all(s["figures"]["frames"] > 0 for s in served["streams"])

            wait_for(read, what="a frame of each stream")
        served["address"] = (kwargs["host"], kwargs["port"])

    monkeypatch.setattr(uvicorn, "run", serve)
    assert main(["serve", "--stream", "synthetic", "--stream", "synthetic", "--port", "8123"]) == 0
    assert served["address"] == ("127.0.0.1", 8123)
    assert [s["source"] for s in served["streams"]] == ["synthetic episode 0", "synthetic episode 1"]
    assert "serving http://127.0.0.1:8123/ (no token: this machine only)" in capsys.readouterr().out


@pytest.mark.parametrize("flag, batched", [([], True), (["--no-batch-streams"], False)])
def test_batch_streams_is_on_unless_turned_off(monkeypatch, flag, batched):
    pytest.importorskip("starlette")
    uvicorn = pytest.importorskip("uvicorn")
    from starlette.testclient import TestClient

    served = {}

    def serve(app, **kwargs):
        with TestClient(app) as client:
            served.update(client.get("/v1/server").json())

    monkeypatch.setattr(uvicorn, "run", serve)
    assert main(["serve", *flag]) == 0
    assert served["batch_streams"] is batched and served["encoder_calls"] == served["llm_prefill_calls"] == 0
