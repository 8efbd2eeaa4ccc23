"""`stc serve` refuses unsafe or impossible start-ups in one line, exit 2, before loading a model."""

import sys

import pytest

from stc.cli import main
from stc.cli.serve import is_loopback


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
