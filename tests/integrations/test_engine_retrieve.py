"""`StreamingSession.retrieve`: the retrieval step of `ask` alone (what a question would read)."""

import pytest

from stc.integrations.engine.session import StreamingSession
from tests.tiny import random_frames

QUESTION = "what is in the video ?"


def test_retrieve_gives_the_blocks_ask_reads_and_leaves_the_stream_unchanged(llava, processor):
    with StreamingSession(llava, processor, n_local=6, topk=2) as session:
        session.append_frames(random_frames(7, seed=3))
        before = session.ask(QUESTION, max_new_tokens=3)
        retrieved = session.retrieve(QUESTION)
        assert retrieved == session.retrieve(QUESTION)
        after = session.ask(QUESTION, max_new_tokens=3)
    assert retrieved == before.retrieved == after.retrieved
    assert all(len(ids) == 2 for ids in retrieved.values())  # topk of 7 blocks: a scoring pass ran
    assert after.token_ids == before.token_ids  # retrieving changed nothing the answer reads


def test_retrieve_respects_since_and_refuses_an_empty_question(llava, processor):
    with StreamingSession(llava, processor, n_local=6, topk=8) as session:
        session.append_frames(random_frames(4, seed=1))
        assert session.retrieve(QUESTION) == {layer: [0, 1, 2, 3] for layer in session.retrieve(QUESTION)}
        assert set(session.retrieve(QUESTION, since=2.0)[0]) == {2, 3}
        with pytest.raises(ValueError, match="non-empty"):
            session.retrieve("  ")
