"""The shipped testbed model, its training script and `stc eval synthetic`."""

import json
import os

import numpy as np
import pytest
import torch

from stc.cli import main as stc_main
from stc.eval.testbed import train as testbed
from stc.eval.records import Query
from stc.eval.synthetic.episodes import OPTION_LETTERS, QUADRANTS, episode_seed, generate_episode
from stc.eval.synthetic.scene import COLOURS, GLYPH, SceneConfig, render_still
from stc.eval.synthetic.benchmark import config_tag, first_word, is_correct, score_synthetic
from stc.integrations.engine.session import StreamingSession
from stc.integrations.loading import load_checkpoint

shipped = pytest.mark.skipif(not (testbed.TESTBED_DIR / "config.json").exists(), reason="testbed model not trained")


def test_first_word_rule():
    assert first_word(" B. blue") == "B"
    assert first_word("Yes, it has") == "Yes"
    assert first_word("3 times") == "3"
    assert first_word("") == ""
    q = Query(qid="q", video="v", time=0.0, prompt="p", answer="C", task="rt_colour")
    assert is_correct(q, "C") and not is_correct(q, "c") and not is_correct(q, "CD")


def test_each_pruner_setting_gets_its_own_run_folder():
    """Runs differing only in the anchors' settings must not share (and so refuse) a folder."""
    from stc import STCConfig

    tags = {config_tag(STCConfig()), config_tag(STCConfig(alpha=0.0)), config_tag(STCConfig(history_window=2))}
    assert len(tags) == 3
    assert config_tag(STCConfig(pruner_scoring="dual_anchor")) == "N2-r0.25-k0.3-c1p1-dual_anchor"  # existing folders still resume
    others = [STCConfig(pruner_scoring="change_novelty", novelty_weight=w) for w in (0.2, 0.8)] + [
        STCConfig(pruner_scoring="motion", motion_radius=2), STCConfig(pruner_scoring="positional", coverage=0.1),
        STCConfig(change_threshold=0.05), STCConfig(share_selection=True), STCConfig(drift_threshold=0.9),
        STCConfig(refresh_tokens=True), STCConfig(min_update_ratio=0.1, change_threshold=0.05)]
    assert len({config_tag(c) for c in others} | tags) == len(others) + 3  # every knob: its own folder


def test_score_synthetic_groups_by_category():
    queries = [Query(qid=str(i), video="v", time=0.0, prompt="p", answer="A", task=t)
               for i, t in enumerate(["rt_colour", "rt_count", "bt_first", "fp_count"])]
    answers = {"0": {"response": "A"}, "1": {"response": "B"}, "2": {"response": "A"}, "3": {"response": "A"}}
    report = score_synthetic(queries, answers).to_json()
    assert report["categories"] == {"rt": 50.0, "bt": 100.0, "fp": 100.0}
    assert report["overall"] == 75.0


def test_cell_labels_and_captions_follow_the_scene():
    episode = generate_episode(episode_seed("train", 3))
    frame = next(f for f, objects in enumerate(episode.states) if sum(o.visible for o in objects) >= 2)
    visible = [o for o in episode.states[frame] if o.visible]
    labels = testbed.cell_labels(episode.states[frame], 96, 4)
    for obj in visible:
        cell = min(3, obj.y // 24) * 4 + min(3, obj.x // 24)
        assert labels[cell, 0] > 0  # the cell holding the object's centre is labelled
    text = testbed.caption(episode.states[frame])
    assert all(f"{o.colour} {o.noun}" in text for o in visible) and text.endswith(" .")


def test_cell_labels_name_each_cells_quadrant():
    labels = testbed.cell_labels((), 96, 4)
    assert (labels[:, :3] == 0).all()  # no object: background everywhere
    quadrants = [QUADRANTS[q] for q in labels[:, 3].tolist()]
    assert quadrants[0] == quadrants[5] == "top left" and quadrants[3] == "top right"
    assert quadrants[12] == "bottom left" and quadrants[15] == quadrants[10] == "bottom right"


def test_random_stills_are_seeded_and_labelled_like_episode_frames():
    """Distinct colours and nouns (one answer to every question), objects inside the frame and
    labelled at their centre cell."""
    scene = SceneConfig()
    first = [render_still(np.random.default_rng(7), scene) for _ in range(2)]
    assert np.array_equal(first[0][0], first[1][0]) and first[0][1] == first[1][1]
    rng = np.random.default_rng(0)
    labelled = drawn_objects = 0
    for _ in range(30):
        image, objects = render_still(rng, scene)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert 1 <= len(objects) <= scene.max_objects
        assert len({o.colour for o in objects}) == len({o.noun for o in objects}) == len(objects)
        labels = testbed.cell_labels(objects, 96, 4)
        for obj in objects:
            half = obj.size / 2
            assert half <= obj.x <= 96 - half and half <= obj.y <= 96 - half  # inside the frame
            # the cell holding the centre names the object, unless the object sits on a cell
            # corner and covers under 30% of each cell, or a larger neighbour takes the cell
            cell = min(3, obj.y // 24) * 4 + min(3, obj.x // 24)
            labelled += int(labels[cell, 0] == list(COLOURS).index(obj.colour) + 1)
            drawn_objects += 1
            drawn = image[obj.y - 1 : obj.y + 2, obj.x - 1 : obj.x + 2].reshape(-1, 3)
            assert obj.shape in ("ring", GLYPH) or (drawn == COLOURS[obj.colour]).all(axis=1).any()
    assert labelled >= 0.85 * drawn_objects


def test_packed_sequence_matches_the_engine_layout():
    builder = testbed.SequenceBuilder(testbed.testbed_tokenizer(), tokens_per_frame=16)
    sample = builder.build(3, [(1, "Question: how many objects are visible now? Answer with a number.", "2")])
    header = len(builder.header)
    block_start = header + 3 * 16
    start, end, visible = sample["blocks"][0]
    assert (start, visible) == (block_start, header + 2 * 16)  # sees the header and frames 0-1
    assert sample["positions"][start] == header + 2 * 16  # continues right after its last frame
    mask = testbed.block_mask(len(sample["ids"]), block_start, sample["blocks"])
    assert mask[start, : header + 32].all() and not mask[start, header + 32 : start].any()
    (answer_at, answer), (eos_at, eos) = sample["labels"]
    assert answer == builder.answer_id("2") and eos == builder.eos and eos_at == answer_at + 1


def test_testbed_tokenizer_reads_each_option_as_one_token():
    tokenizer = testbed.testbed_tokenizer()
    checked = 0
    for index in range(6):
        for q in generate_episode(episode_seed("eval", index), render=False).queries:
            tokens = tokenizer.convert_ids_to_tokens(tokenizer(q.prompt, add_special_tokens=False)["input_ids"])
            assert "<unk>" not in tokens, q.prompt
            if q.kind != "mc":
                continue
            for letter, option in zip(OPTION_LETTERS, q.extra["options"]):
                if f"{letter}. {option}" in tokens:  # a value, or a quadrant such as "top left"
                    checked += 1
                    continue
                colour, *noun_words = option.split()  # a description: "B. red", "letter", "K"
                at = tokens.index(f"{letter}. {colour}")
                assert tokens[at + 1 : at + 1 + len(noun_words)] == noun_words, (option, tokens)
                checked += 1
    assert checked >= 40


def test_main_phase_of_each_step():
    config = testbed.TrainConfig(lookup_steps=3, perception_steps=4, short_steps=10, long_steps=10)
    phases = [testbed.main_phase(step, config) for step in range(27)]
    assert phases == ["lookup"] * 3 + ["perception"] * 4 + ["short"] * 10 + ["long"] * 10


def test_perception_steps_come_first_then_every_fifth_episode_step():
    config = testbed.TrainConfig(lookup_steps=3, perception_steps=4, short_steps=10, long_steps=10, perception_every=5)
    turns = [step for step in range(config.lookup_steps, 27) if testbed.perception_turn(step, config)]
    assert turns == [11, 16, 21, 26]  # episode steps 4, 9, 14, 19 (the phase steps 3..6 come before)
    assert not any(testbed.perception_turn(step, testbed.TrainConfig(perception_every=0)) for step in range(2000))


def test_drop_pattern_flags(tmp_path, monkeypatch, capsys):
    from stc.eval.testbed.recipes import RECIPES
    from stc.eval.testbed.token_drop import NEUTRAL_PATTERNS, PATTERNS

    assert testbed.TrainConfig().drop_patterns == PATTERNS  # v2's four, unchanged
    v3 = RECIPES["v3"][0]
    assert v3.drop_patterns == NEUTRAL_PATTERNS and v3.dense_share >= 0.25
    assert v3.validation_episodes >= 60  # issue 33: validation on >= 60 episodes
    main_steps = v3.lookup_steps + v3.perception_steps + v3.short_steps + v3.long_steps
    decay_starts = main_steps - round(v3.decay_share * main_steps)
    assert testbed.main_phase(decay_starts, v3) == "long"  # the episodes of full length train at the peak first
    assert testbed.learning_rate(decay_starts - 1, main_steps, v3) == v3.lr > testbed.learning_rate(decay_starts, main_steps, v3)
    calls = []
    monkeypatch.setattr(testbed, "train", lambda out, config, arch, **kwargs: calls.append(config))
    assert stc_main(["testbed", "train", "--out", str(tmp_path), "--drop-patterns", "blob,random", "--dense-share", "0.4"]) == 0
    assert (calls[-1].drop_patterns, calls[-1].dense_share) == (("blob", "random"), 0.4)
    assert stc_main(["testbed", "train", "--out", str(tmp_path), "--drop-patterns", "random,stripes"]) == 2
    assert capsys.readouterr().err.strip() == ("stc testbed train: error: unknown drop pattern 'stripes'; "
                                               "one of random, blob, change, objects")
    assert stc_main(["testbed", "train", "--out", str(tmp_path), "--dense-share", "2"]) == 2
    assert len(calls) == 1


def test_warmup_stable_decay_holds_the_peak_then_falls_to_the_floor():
    config = testbed.TrainConfig(schedule="wsd", lr=1e-3, warmup_steps=50, decay_share=0.2, min_lr_share=0.02)
    curve = [testbed.learning_rate(step, 1000, config) for step in range(1000)]
    assert curve[0] == pytest.approx(1e-3 / 50) and curve[49] == pytest.approx(1e-3)  # linear warmup
    assert all(lr == 1e-3 for lr in curve[50:800])  # stable: the peak until the last fifth
    assert curve[800] < 1e-3 and curve[-1] == pytest.approx(0.02e-3)  # the decay ends at the floor
    assert all(b < a for a, b in zip(curve[799:], curve[800:]))  # strictly falling through the decay
    decay = np.diff(curve[800:])
    assert np.allclose(decay, decay[0])  # linearly
    short = testbed.TrainConfig(schedule="wsd", warmup_steps=1, decay_share=0.5)
    assert [testbed.learning_rate(s, 4, short) / short.lr for s in range(4)] == pytest.approx([1, 1, 0.525, 0.05])


def test_the_cosine_schedule_is_unchanged():
    """v1/v2's curve, the default: warmup, then one cosine from the peak to min_lr_share."""
    config = testbed.TrainConfig()
    assert config.schedule == "cosine"
    assert testbed.learning_rate(50, 1050, config) == pytest.approx(1e-3)
    assert testbed.learning_rate(550, 1050, config) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
    assert testbed.learning_rate(1050, 1050, config) == pytest.approx(0.05e-3)
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        testbed.TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="decay share"):
        testbed.TrainConfig(schedule="wsd", decay_share=0)


def test_schedule_flags(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(testbed, "train", lambda out, config, arch, **kwargs: calls.append(config))
    assert stc_main(["testbed", "train", "--out", str(tmp_path), "--schedule", "wsd", "--decay-share", "0.3"]) == 0
    assert (calls[-1].schedule, calls[-1].decay_share) == ("wsd", 0.3)
    assert stc_main(["testbed", "train", "--out", str(tmp_path), "--schedule", "wsd", "--decay-share", "0"]) == 2
    assert capsys.readouterr().err.strip() == "stc testbed train: error: decay share must be in (0, 1], got 0.0"
    assert len(calls) == 1


def test_validation_scores_by_the_benchmarks_letter_rule(monkeypatch):
    """A prediction that writes the right letter with another option's text ("B. green" where B
    is red) is right, as the benchmark scores it; a wrong letter is wrong; "token" counts only
    the exact option token trained. Predictions are planted in place of the model's."""
    import torch

    from stc.integrations.processing import FramePreprocessing

    scene = SceneConfig(version=3)
    builder = testbed.SequenceBuilder(testbed.testbed_tokenizer(), tokens_per_frame=16)
    vocabulary = builder.tokenizer.get_vocab()
    episodes = [generate_episode(episode_seed("train", testbed.VALIDATION_FIRST_INDEX + i), scene, render=False).queries
                for i in range(3)]

    def planted(letter_right: bool):
        plan = []
        for queries in episodes:
            tokens = []
            for q in queries:
                trained = builder.answer_ids(testbed.training_answer(q))[0]
                if q.kind != "mc":
                    wrong = {"Yes": "No", "No": "Yes"}.get(q.answer, "9")  # no count reaches 9 (at most 8 objects)
                    tokens.append(trained if letter_right else builder.answer_id(wrong))
                    continue
                letter = q.answer if letter_right else OPTION_LETTERS[(OPTION_LETTERS.index(q.answer) + 1) % 4]
                tokens.append(next(i for t, i in vocabulary.items() if t.startswith(f"{letter}. ") and i != trained))
            plan.append(tokens)
        return iter(plan)

    def fake_forward_loss(model, batch, preprocessing, *args):
        predicted = torch.zeros(len(batch["targets"]), dtype=torch.long)
        predicted[batch["firsts"]] = torch.tensor(next(plan))
        return None, predicted

    monkeypatch.setattr(testbed, "forward_loss", fake_forward_loss)
    preprocessing = FramePreprocessing(96, 96, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    plan = planted(letter_right=True)
    right = testbed.validate(torch.nn.Linear(1, 1), builder, preprocessing, scene, 3)
    mc = sum(q.kind == "mc" for queries in episodes for q in queries)
    total = sum(len(queries) for queries in episodes)
    assert mc >= 5 and right["all"] == 1.0 and set(right) >= {"rt", "bt", "fp", "all", "token"}
    assert right["token"] == pytest.approx((total - mc) / total)  # only the open answers are the trained token
    plan = planted(letter_right=False)
    wrong = testbed.validate(torch.nn.Linear(1, 1), builder, preprocessing, scene, 3)
    assert wrong["all"] == 0.0 and wrong["token"] == 0.0


def _tiny_run():
    """A training config and architecture that run every phase in seconds."""
    config = testbed.TrainConfig(vision_steps=2, vision_batch=3, lookup_steps=2, lookup_batch=3, perception_steps=2,
                                 perception_batch=4, short_steps=2, long_steps=2, video_batch=1, perception_every=2,
                                 validate_every=1000, validation_episodes=1, warmup_steps=1, checkpoint_every=3)
    arch = testbed.TestbedArchitecture(vision_hidden=32, vision_intermediate=64, vision_layers=1, vision_heads=2,
                                       text_hidden=32, text_intermediate=64, text_layers=1, text_heads=2, text_kv_heads=1)
    return config, arch


def test_training_script_runs_and_saves_a_loadable_checkpoint(tmp_path):
    config, arch = _tiny_run()
    out = testbed.train(tmp_path / "model", config, arch)
    log = (out / "training_log.txt").read_text()
    assert "vision validation" in log and "validation bt" in log and "done: 2 vision steps + 8 steps" in log
    for phase in ("vision", "lookup", "perception", "short", "long"):  # the cost of each phase, to size a run
        assert f"\n{phase} phase: 2 steps in " in log and " CPU s a step)" in log
    assert log.index("\nlong phase:") < log.rindex("\nvalidation bt")  # the log in the order things happened
    model, processor = load_checkpoint(out)
    assert model.config.model_type == "llava_onevision"
    record = json.loads((out / testbed.TRAINING_RECORD).read_text())
    assert record["generator"] == 2 and record["config"]["generator"] == 2 and record["tokens_per_frame"] == 64
    assert ", device cpu\n" in log  # where the steps ran (stc testbed train --device)


@pytest.mark.parametrize("generator", (2, 3))
def test_every_episode_of_a_run_comes_from_its_generator(generator):
    config = testbed.TrainConfig(generator=generator, short_frames=12)
    validation, short, long = testbed.training_scenes(config)
    assert validation.version == short.version == long.version == generator
    assert validation == SceneConfig(version=generator)  # validation: the benchmark's own episodes
    assert (short.frames, long.frames) == (12, SceneConfig().frames)
    assert short.queries == long.queries == (config.questions_min, config.questions_max)


def test_the_model_folder_records_its_generator(tmp_path):
    import dataclasses

    config, arch = _tiny_run()
    out = testbed.train(tmp_path / "v3", dataclasses.replace(config, generator=3), arch)
    record = json.loads((out / testbed.TRAINING_RECORD).read_text())
    assert record["generator"] == 3 and record["architecture"]["text_hidden"] == 32
    assert "testbed training on generator 3 episodes" in (out / "training_log.txt").read_text()


def test_train_flags_start_from_the_recipe(tmp_path, monkeypatch):
    """No flag: today's defaults (generator 2); --recipe v3 changes the defaults; a flag wins over either."""
    from stc.eval.testbed.recipes import RECIPES

    calls = []
    monkeypatch.setattr(testbed, "train", lambda out, config, arch, **kwargs: calls.append((config, arch)))
    assert stc_main(["testbed", "train", "--out", str(tmp_path)]) == 0
    assert calls[-1] == (testbed.TrainConfig(), testbed.TestbedArchitecture()) and calls[-1][0].generator == 2
    assert stc_main(["testbed", "train", "--out", str(tmp_path), "--recipe", "v3"]) == 0
    assert calls[-1] == RECIPES["v3"] and calls[-1][0].generator == 3 and calls[-1][0].schedule == "wsd"
    assert stc_main(["testbed", "train", "--out", str(tmp_path), "--recipe", "v3", "--generator", "2", "--lr", "0.002",
                     "--text-layers", "2"]) == 0
    config, arch = calls[-1]
    assert (config.generator, config.lr, arch.text_layers) == (2, 0.002, 2)
    assert config.vision_steps == RECIPES["v3"][0].vision_steps


def test_train_refuses_an_unknown_generator_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        stc_main(["testbed", "train", "--out", str(tmp_path / "m"), "--generator", "4"])
    assert refused.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stc testbed train: error:") and "--generator" in err and "\n" not in err
    with pytest.raises(ValueError, match="version must be 2 or 3"):
        testbed.train(tmp_path / "m", testbed.TrainConfig(generator=4))
    assert not (tmp_path / "m").exists()  # refused before writing anything


@shipped
def test_shipped_model_loads_offline_and_answers_held_out_questions():
    """Every question of ten held-out episodes. Measured on the shipped weights: multiple choice
    41 of 62 right (chance 1/4), every answer a listed letter with its option's first word (the
    option token), 58 of 62 with the whole option as listed (the rest of a description is written
    from what the model saw); Yes/No and counts 36 of 40. The bounds sit several answers below
    those figures (no single answer decides the test) and far above chance."""
    model, processor = load_checkpoint(testbed.TESTBED_DIR)
    assert sum(p.numel() * p.element_size() for p in model.parameters()) <= 20 * 2**20
    right = {"mc": 0, "open": 0}
    total = {"mc": 0, "open": 0}
    as_listed = {"token": 0, "whole": 0}
    with StreamingSession(model, processor, max_new_tokens=4) as session:
        for index in range(10):
            episode = generate_episode(episode_seed("eval", index))
            session.reset()
            shown = 0
            for q in episode.queries:
                upto = int(round(q.time)) + 1
                session.append_frames(episode.frames[shown:upto], timestamps=episode.timestamps[shown:upto])
                shown = upto
                text = session.ask(q.prompt).text
                kind = "mc" if q.kind == "mc" else "open"
                letter, _, option = text.partition(". ")
                if kind == "mc" and letter in OPTION_LETTERS:
                    listed = q.extra["options"][OPTION_LETTERS.index(letter)]
                    written = option.split()[: len(listed.split())]
                    as_listed["token"] += written[:1] == listed.split()[:1]
                    as_listed["whole"] += written == listed.split()
                right[kind] += is_correct(q, text)
                total[kind] += 1
    assert total["mc"] >= 50 and total["open"] >= 30
    assert as_listed["token"] >= 0.9 * total["mc"], f"option tokens as listed {as_listed['token']}/{total['mc']}"
    assert as_listed["whole"] >= 0.75 * total["mc"], f"options written as listed {as_listed['whole']}/{total['mc']}"
    assert right["mc"] / total["mc"] >= 0.45, f"multiple choice {right['mc']}/{total['mc']}"
    assert right["open"] / total["open"] >= 0.7, f"Yes/No and counts {right['open']}/{total['open']}"


@shipped
def test_engine_answers_what_the_training_layout_predicts():
    """The streaming engine (frames prefilled into the KV cache call by call, the question asked
    through the chat template, greedy decoding) computes what training computes in one packed,
    block-masked sequence: its first answer token is the teacher-forced argmax, question by
    question, right or wrong. (On held-out seeds 0-99 the two agreed on all 1,043 questions.)"""
    import torch

    model, processor = load_checkpoint(testbed.TESTBED_DIR)
    builder = testbed.SequenceBuilder(processor.tokenizer, tokens_per_frame=16)
    seed = episode_seed("eval", 3)
    sample, pixels, queries, _ = testbed.episode_sample(builder, processor.frames, seed, SceneConfig())
    batch = testbed.collate([sample], [pixels])
    with torch.no_grad():
        _, predicted = testbed.forward_loss(model, batch, processor.frames)
    expected = predicted[batch["firsts"]].tolist()
    episode = generate_episode(seed)
    engine = []
    with StreamingSession(model, processor, max_new_tokens=1) as session:
        shown = 0
        for q in episode.queries:
            upto = int(round(q.time)) + 1
            session.append_frames(episode.frames[shown:upto], timestamps=episode.timestamps[shown:upto])
            shown = upto
            engine.append(session.ask(q.prompt).token_ids[0])
    assert len(queries) >= 8
    assert engine == expected


@shipped
def test_kept_on_objects_measures_where_the_kept_tokens_fall():
    """Keeping every token puts exactly the object cells' share on objects; on the shipped model the
    Gaussian scorer keeps object tokens far above that share (measured: 60% against 21% on ten
    episodes), random tokens near it."""
    from stc import STCConfig
    from stc.eval.synthetic.benchmark import kept_on_objects
    from stc.peers import MethodConfig

    model, processor = load_checkpoint(testbed.TESTBED_DIR)
    every = kept_on_objects(model, processor, STCConfig(cacher=False, keep_ratio=1.0), 0, 1, progress=False)
    assert every["kept_share"] == pytest.approx(every["object_cells_share"]) and every["frames"] == 32
    assert 5 < every["object_cells_share"] < 50
    gaussian = kept_on_objects(model, processor, STCConfig(cacher=False, keep_ratio=0.25, pruner_scoring="gaussian"),
                               0, 2, progress=False)
    assert gaussian["kept_tokens"] == 2 * 32 * 4
    assert gaussian["kept_share"] > 2 * gaussian["object_cells_share"]
    random = kept_on_objects(model, processor, MethodConfig("random", keep_ratio=0.25), 0, 2, progress=False)
    assert random["kept_share"] < gaussian["kept_share"] / 2


@shipped
def test_eval_synthetic_end_to_end(tmp_path):
    out = tmp_path / "json"
    code = stc_main(["eval", "synthetic", "--n", "2", "--out", str(tmp_path), "--json", str(out), "--no-progress",
                     "--placement"])
    assert code == 0
    data = json.loads(out.read_text())
    assert {"overall", "categories", "tasks", "baseline", "retained"} <= set(data)
    assert data["questions"] > 10
    assert data["placement"]["frames"] == 64 and data["placement"]["kept_tokens"] > 0


def test_eval_synthetic_placement_needs_a_compressing_method(tmp_path, capsys):
    code = stc_main(["eval", "synthetic", "--n", "1", "--out", str(tmp_path), "--no-stc", "--placement"])
    assert code == 2 and "--placement" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before writing anything


def test_kept_on_objects_refuses_a_token_count_that_is_no_square_grid(monkeypatch):
    """17 tokens a frame (a grid plus, say, a newline token) cannot be mapped to cells."""
    from stc.eval.synthetic.benchmark import kept_on_objects
    from stc.integrations.engine import session as engine

    class SeventeenTokens:
        def __init__(self, *args, **kwargs): ...
        def __enter__(self): return self
        def __exit__(self, *exc): return False
        def reset(self): ...
        def append_frames(self, frames): return engine.IngestReport(len(frames), 17, 17, 0.0, 0.0)

    monkeypatch.setattr(engine, "StreamingSession", SeventeenTokens)
    with pytest.raises(ValueError, match="square grid"):
        kept_on_objects(None, None, None, 0, 1, progress=False)


def test_eval_synthetic_blind_with_a_preset(tmp_path):
    code = stc_main(["eval", "synthetic", "--model", "llava-ov-tiny", "--n", "1", "--out", str(tmp_path),
                         "--blind", "--no-stc", "--json", str(tmp_path / "s.json"), "--no-progress"])
    assert code == 0
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["blind"] is True and data["method"] == "dense"
    answers = (tmp_path / "dense-seed0-n1-blind" / "answers.jsonl").read_text().splitlines()
    assert len(answers) == data["questions"] and 0.0 <= data["overall"] <= 100.0


def test_eval_synthetic_refuses_to_resume_over_other_weights(tmp_path):
    import torch

    from tests.tiny import tiny_llava, tiny_processor

    model_dir = tmp_path / "model"
    tiny_llava(dtype=torch.float32, seed=0).save_pretrained(model_dir)
    tiny_processor().save_pretrained(model_dir)
    common = ["eval", "synthetic", "--model", str(model_dir), "--n", "1", "--out", str(tmp_path / "o"),
              "--no-stc", "--no-progress"]
    assert stc_main(common) == 0
    assert stc_main(common) == 0  # same weights: resumes (nothing left to do)
    relative = [os.path.relpath(model_dir) if arg == str(model_dir) else arg for arg in common]
    assert stc_main(relative) == 0  # the same folder by another path: resumes too
    tiny_llava(dtype=torch.float32, seed=1).save_pretrained(model_dir)  # retrained in place
    assert stc_main(common) == 2


@shipped
def test_eval_synthetic_interrupted_says_how_to_resume_and_resumes(tmp_path, monkeypatch, capsys):
    from stc.integrations.engine.session import StreamingSession

    ask, asked = StreamingSession.ask, []

    def interrupted_after_three(self, *args, **kwargs):
        if len(asked) == 3:
            raise KeyboardInterrupt
        asked.append(1)
        return ask(self, *args, **kwargs)

    command = ["eval", "synthetic", "--n", "1", "--out", str(tmp_path), "--no-stc", "--no-progress"]
    monkeypatch.setattr(StreamingSession, "ask", interrupted_after_three)
    assert stc_main(command) == 130
    assert f"interrupted: 3 answers saved in {tmp_path}" in capsys.readouterr().err
    monkeypatch.setattr(StreamingSession, "ask", ask)
    assert stc_main(command) == 0
    err = capsys.readouterr().err
    assert f"resuming: found 3 answers in {tmp_path}" in err and " left" in err


def test_a_frozen_vision_tower_stays_as_the_vision_phase_left_it(tmp_path):
    """--freeze-vision: the main phase trains the projector and the LLM, not the ViT. The same run
    without main steps gives the ViT the main phase must leave unchanged."""
    import dataclasses

    import torch
    from safetensors.torch import load_file

    config, arch = _tiny_run()
    frozen = dataclasses.replace(config, freeze_vision=True)
    vision_only = dataclasses.replace(frozen, lookup_steps=0, perception_steps=0, short_steps=0, long_steps=0)
    runs = {name: load_file(testbed.train(tmp_path / name, c, arch) / "model.safetensors")
            for name, c in (("frozen", frozen), ("vision_only", vision_only), ("trained", config))}
    tower = [k for k in runs["frozen"] if k.startswith("vision_tower.")]
    projector = [k for k in runs["frozen"] if k.startswith("multi_modal_projector.")]
    assert tower and projector
    assert all(torch.equal(runs["frozen"][k], runs["vision_only"][k]) for k in tower)
    assert not all(torch.equal(runs["frozen"][k], runs["vision_only"][k]) for k in projector)  # still trained
    assert not all(torch.equal(runs["trained"][k], runs["vision_only"][k]) for k in tower)  # default: trained on


def test_a_paused_and_resumed_run_trains_exactly_what_an_uninterrupted_run_trains(tmp_path):
    import torch
    from safetensors.torch import load_file

    config, arch = _tiny_run()
    whole = testbed.train(tmp_path / "whole", config, arch)
    assert not (whole / testbed.CHECKPOINT).exists()  # deleted once training completes
    pieces = testbed.train(tmp_path / "pieces", config, arch, stop_after_minutes=0)  # pauses after one step
    resumes = 0
    while "done:" not in (pieces / "training_log.txt").read_text():
        assert (pieces / testbed.CHECKPOINT).exists()
        testbed.train(pieces, resume=True, stop_after_minutes=0)
        resumes += 1
    assert resumes == 2 + 8 - 1  # each of the 2 vision and 8 main steps in its own process
    log = (pieces / "training_log.txt").read_text()
    assert "paused after" in log and "resumed from" in log and "--resume" in log
    a, b = load_file(whole / "model.safetensors"), load_file(pieces / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _untrained_testbed(tmp_path, grid: int):
    """A small testbed model of this geometry, randomly initialised and saved as the trainer saves
    one, loaded back through load_checkpoint."""
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration

    from stc.integrations.processing import FramePreprocessing

    _, widths = _tiny_run()
    arch = testbed.TestbedArchitecture.with_grid(grid, **{k: v for k, v in vars(widths).items() if k != "patch_size"})
    config = testbed.testbed_config(arch)
    # weights far larger than a fresh model's (std 0.02), so that attention is sharp and every
    # output depends on which tokens sit where
    config.text_config.initializer_range = config.vision_config.initializer_range = 0.3
    torch.manual_seed(grid)
    model = LlavaOnevisionForConditionalGeneration(config)
    preprocessing = FramePreprocessing(arch.image_size, arch.image_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    testbed.save(model, testbed.testbed_tokenizer(), preprocessing, tmp_path / f"grid{grid}")
    return arch, *load_checkpoint(tmp_path / f"grid{grid}")


@pytest.mark.parametrize("grid", (4, 6, 8))
def test_training_layout_is_the_engines_for_every_geometry(tmp_path, grid):
    """For each token grid the trainer offers, the engine (dense, and pruned by random tokens at
    keep 0.5, laid out contiguously) computes the same first-answer-token logits as the packed
    training sequence with the same kept tokens, question by question. Logits, not only their
    argmax: an untrained model's argmax hardly depends on the context, its logits do (a position
    shifted by one changes them)."""
    import torch

    from stc.peers import MethodConfig

    arch, model, processor = _untrained_testbed(tmp_path, grid)
    logits = []
    model.lm_head.register_forward_hook(lambda module, inputs, output: logits.append(output.detach().reshape(-1, output.shape[-1])))
    tokens = arch.tokens_per_frame
    episode = generate_episode(episode_seed("eval", 5))
    builder = testbed.SequenceBuilder(processor.tokenizer, tokens_per_frame=tokens)
    queries = [(int(round(q.time)), q.prompt, testbed.training_answer(q)) for q in episode.queries]
    for config in (None, MethodConfig("random", keep_ratio=0.5)):
        engine, kept = [], []
        with StreamingSession(model, processor, config=config, max_new_tokens=1) as session:
            assert session.append_frames(episode.frames[:1], timestamps=episode.timestamps[:1]).tokens_in == tokens
            session.reset()
            shown = 0
            for q in episode.queries:
                for frame in range(shown, int(round(q.time)) + 1):
                    session.append_frames(episode.frames[frame : frame + 1], timestamps=episode.timestamps[frame : frame + 1])
                    if config is not None:
                        kept.append(session.state.call.kept[0][-1].cpu() + tokens * frame)
                shown = int(round(q.time)) + 1
                logits.clear()
                session.ask(q.prompt)
                engine.append(logits[0][-1])  # the prompt's last position: the first answer token
        per_frame = None if config is None else len(kept[0])
        if config is not None:
            assert per_frame == tokens // 2
            kept += [torch.arange(per_frame) + tokens * frame for frame in range(shown, len(episode.frames))]
        sample = builder.build(len(episode.frames), queries, kept=per_frame)
        sample["keep"] = None if config is None else torch.cat(kept)
        batch = testbed.collate([sample], [processor.frames(episode.frames)])
        logits.clear()
        with torch.no_grad():
            testbed.forward_loss(model, batch, processor.frames)
        training = logits[0][batch["firsts"]]
        assert len(engine) >= 8
        torch.testing.assert_close(torch.stack(engine), training, atol=1e-4, rtol=1e-4, msg=f"grid {grid}, {config}")


def test_geometry_flags_and_refusals(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(testbed, "train", lambda out, config, arch, **kwargs: calls.append(arch))
    assert stc_main(["testbed", "train", "--out", str(tmp_path), "--grid", "6"]) == 0
    assert (calls[-1].grid, calls[-1].tokens_per_frame, calls[-1].patch_size) == (6, 36, 8)
    assert stc_main(["testbed", "train", "--out", str(tmp_path), "--recipe", "v3"]) == 0
    assert calls[-1].tokens_per_frame >= 36  # issue 33: at least 36 LLM tokens a frame
    assert stc_main(["testbed", "train", "--out", str(tmp_path), "--patch-size", "12"]) == 0
    assert calls[-1].grid == 4  # the shipped v1 geometry
    assert testbed.TestbedArchitecture().grid == 8 and testbed.TestbedArchitecture.with_grid(4).patch_size == 12
    assert stc_main(["testbed", "train", "--out", str(tmp_path), "--grid", "5"]) == 2
    assert stc_main(["testbed", "train", "--out", str(tmp_path), "--patch-size", "7"]) == 2
    assert stc_main(["testbed", "train", "--out", str(tmp_path), "--grid", "6", "--patch-size", "8"]) == 2
    assert len(calls) == 3


def test_resume_without_a_checkpoint_is_refused(tmp_path, capsys):
    from stc.cli import main

    assert main(["testbed", "train", "--out", str(tmp_path), "--resume"]) == 2
    assert capsys.readouterr().err.strip() == (f"stc testbed train: error: no training checkpoint "
                                               f"{tmp_path / testbed.CHECKPOINT} to resume")


def test_resume_refuses_settings_it_would_ignore(tmp_path, capsys):
    """A resumed run continues with its checkpoint's config and architecture: a recipe, training
    or architecture flag beside --resume is refused rather than silently ignored."""
    from stc.cli import main

    assert main(["testbed", "train", "--out", str(tmp_path), "--resume", "--long-steps", "900", "--grid", "6"]) == 2
    assert capsys.readouterr().err.strip() == ("stc testbed train: error: --resume continues with the run's own "
                                               "settings; drop --grid, --long-steps")
    assert main(["testbed", "train", "--out", str(tmp_path), "--resume", "--recipe", "v3"]) == 2
    assert "drop --recipe" in capsys.readouterr().err


@shipped
def test_dropped_token_training_layout_is_what_the_engine_feeds_a_pruned_stream():
    """The engine prunes each frame with a selector (random tokens, keep 0.5) and lays the kept
    tokens out contiguously; a training sample that keeps the same tokens (`keep`) predicts the
    same first answer token for every question."""
    import torch

    from stc.peers import MethodConfig

    model, processor = load_checkpoint(testbed.TESTBED_DIR)
    seed = episode_seed("eval", 5)
    episode = generate_episode(seed)
    engine, kept = [], []
    with StreamingSession(model, processor, config=MethodConfig("random", keep_ratio=0.5), max_new_tokens=1) as session:
        shown = 0
        for q in episode.queries:
            for frame in range(shown, int(round(q.time)) + 1):
                session.append_frames(episode.frames[frame : frame + 1], timestamps=episode.timestamps[frame : frame + 1])
                kept.append(session.state.call.kept[0][-1].cpu() + 16 * frame)
            shown = int(round(q.time)) + 1
            engine.append(session.ask(q.prompt).token_ids[0])
    for frame in range(shown, len(episode.frames)):  # frames after the last question: never seen by it
        kept.append(torch.arange(8) + 16 * frame)
    builder = testbed.SequenceBuilder(processor.tokenizer, tokens_per_frame=16)
    queries = [(int(round(q.time)), q.prompt, testbed.training_answer(q)) for q in episode.queries]
    sample = builder.build(len(episode.frames), queries, kept=8)
    sample["keep"] = torch.cat(kept)
    batch = testbed.collate([sample], [processor.frames(episode.frames)])
    with torch.no_grad():
        _, predicted = testbed.forward_loss(model, batch, processor.frames)
    assert len(engine) >= 8
    assert engine == predicted[batch["firsts"]].tolist()


def test_train_refuses_a_device_it_cannot_use_in_one_line(tmp_path, capsys):
    from stc.cli import main

    out = tmp_path / "never"
    assert main(["testbed", "train", "--out", str(out), "--device", "tpu"]) == 2
    assert capsys.readouterr().err.strip() == "stc testbed train: error: --device must be cpu, cuda or cuda:N, got 'tpu'"
    if not torch.cuda.is_available():
        assert main(["testbed", "train", "--out", str(out), "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("stc testbed train: error: --device cuda: torch ") and err.endswith("sees no CUDA device here")
    assert not out.exists()  # refused before anything was written


def test_a_training_batch_moves_to_the_device_whole():
    batch = testbed.collate([{"ids": [1, 2, 3], "positions": [0, 1, 2], "video": (0, 0), "blocks": [], "firsts": [0],
                              "labels": [(2, 5)], "keep": np.array([0, 2])}], [torch.zeros(1, 3, 8, 8)])
    moved = testbed.on_device(batch, torch.device("cpu"))
    assert set(moved) == set(batch)
    assert all(moved[k].device.type == "cpu" for k, v in batch.items() if isinstance(v, torch.Tensor))
    assert isinstance(moved["keep"][0], torch.Tensor) and moved["keep"][0].tolist() == [0, 2]
    assert moved["pixels"] is batch["pixels"]  # concatenated first, then moved (forward_loss)
