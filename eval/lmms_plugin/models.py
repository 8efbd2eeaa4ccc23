"""The lmms-eval model classes: one simple and one chat class per family, over a Hugging Face
model that `stc.patch` compresses (`method=dense` leaves it unpatched: the baseline through the
same id, prompts and inputs).

Request types: `generate_until` (offline video QA: frames sampled as the family's built-in
lmms-eval model samples them, `inputs`), `generate_until_multi_round` (a stream per document,
`streaming`); `loglikelihood` is not offered. Written against lmms-eval's core (`api.model`,
`api.instance`, `protocol`) only, never its built-in model files, which import torchvision.
"""

from __future__ import annotations

import logging

import torch
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages
from tqdm import tqdm

import stc
from stc.integrations import StreamingSession
from stc.eval.presets import load_model

from .inputs import load_frames, video_inputs
from .options import ModelArgError, parse_model_args
from .streaming import DocumentStream

log = logging.getLogger(__name__)


def _one_video(visuals, where: str) -> str:
    videos = [v for v in (visuals or []) if isinstance(v, str)]
    if len(videos) != 1 or len(videos) != len(visuals or []):
        raise ValueError(f"{where}: the stc models answer about exactly one video file per request, "
                         f"got {len(visuals or [])} visual(s) of which {len(videos)} file path(s)")
    return videos[0]


def _greedy(gen_kwargs: dict, where: str) -> None:
    if gen_kwargs.get("do_sample") or (gen_kwargs.get("temperature") or 0) > 0 or (gen_kwargs.get("num_beams") or 1) > 1:
        raise ValueError(f"{where}: the stc models decode greedily; got generation_kwargs {gen_kwargs}")


def _until(text: str, gen_kwargs: dict) -> str:
    until = gen_kwargs.get("until") or []
    for stop in [until] if isinstance(until, str) else until:
        if stop and stop != "\n\n":  # the built-in Qwen models ignore "\n\n" as a stop, so do we
            text = text.split(stop)[0]
    return text


class STCVideoModel(lmms):
    """Simple-protocol model: requests carry (context, generation_kwargs, doc_to_visual, ...)."""

    model_id = "stc"
    families: tuple[str, ...] = ()
    is_simple = True

    def __init__(self, **model_args):
        super().__init__()
        self.options = parse_model_args(model_args, self.model_id)
        model, self.processor, self.description = load_model(
            self.options.pretrained, self.options.torch_device(), self.options.torch_dtype())
        if model.config.model_type not in self.families:
            raise ModelArgError(f"model_args: {self.model_id} takes a {' or '.join(self.families)} model; "
                                f"{self.options.pretrained} is {model.config.model_type!r}")
        self.model = model.eval()
        self.method = self.options.method_config()
        self._session().close()  # the engine's own checks of n_local, topk, kv_bits, ... before any request
        self.restarts = 0  # multi-round documents whose clips did not extend their stream

    def _session(self) -> StreamingSession:
        return StreamingSession(self.model, self.processor, config=self.method, sample_fps=self.options.stream_fps,
                                max_new_tokens=self.options.max_new_tokens, system_prompt=self.options.system_prompt,
                                **self.options.session_knobs)

    def loglikelihood(self, requests):
        raise NotImplementedError(f"{self.model_id} generates answers; loglikelihood tasks are not supported")

    # -- one answer about one video -------------------------------------------------------

    @torch.inference_mode()
    def answer(self, video: str, question: str, gen_kwargs: dict) -> tuple[str, list[int]]:
        """(text, generated token ids) for one question about one video file."""
        frames, times = load_frames(video, self.model.config.model_type, self.options.max_num_frames, self.options.fps)
        inputs = video_inputs(self.model, self.processor, frames, times, question.replace("<image>", "").strip(),
                              self.options.system_prompt)
        sample = bool(gen_kwargs.get("do_sample")) or (gen_kwargs.get("temperature") or 0) > 0
        settings = {"max_new_tokens": int(gen_kwargs.get("max_new_tokens") or self.options.max_new_tokens),
                    "do_sample": sample, "num_beams": int(gen_kwargs.get("num_beams") or 1)}
        if sample:
            settings.update({k: gen_kwargs[k] for k in ("temperature", "top_p", "top_k") if gen_kwargs.get(k) is not None})
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.method is None:
            out = self.model.generate(**inputs, **settings, pad_token_id=pad)
        else:
            with stc.patched(self.model, self.method):
                out = self.model.generate(**inputs, **settings, pad_token_id=pad)
        tokens = out[0, inputs["input_ids"].shape[1]:].tolist()
        return _until(tokenizer.decode(tokens, skip_special_tokens=True).strip(), gen_kwargs), tokens

    def _doc(self, task, split, doc_id):
        return self.task_dict[task][split][doc_id]

    def generate_until(self, requests) -> list[str]:
        answers = []
        for request in tqdm(requests, disable=self.rank != 0, desc=f"{self.model_id} responding"):
            video, text, gen_kwargs = self._offline_request(request)
            answers.append(self.answer(video, text, gen_kwargs)[0])
        return answers

    def _offline_request(self, request) -> tuple[str, str, dict]:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        return _one_video(doc_to_visual(self._doc(task, split, doc_id)), f"{task} doc {doc_id}"), context, gen_kwargs

    # -- a stream per document ------------------------------------------------------------

    def generate_until_multi_round(self, requests) -> list[list[str]]:
        """Per request, the answers of all its rounds, from one stream fed each frame once."""
        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc=f"{self.model_id} streaming"):
            gen_kwargs = self._gen_kwargs(request)
            _greedy(gen_kwargs, f"{request.args[-2]} doc {request.args[-3]}")
            limit = int(gen_kwargs.get("max_new_tokens") or self.options.max_new_tokens)
            stream = DocumentStream(self._session, self.options.stream_fps)
            outputs, info = [], None
            try:
                while (step := self._round(request, len(outputs), outputs, info)) is not None:
                    clip, question, info = step
                    outputs.append(_until(stream.answer(clip, question, limit), gen_kwargs))
            finally:
                self.restarts += stream.restarts
                stream.close()
            results.append(outputs)
        return results

    @staticmethod
    def _gen_kwargs(request) -> dict:
        return request.args[1]

    def _round(self, request, index: int, outputs: list[str], info):
        """(clip, question, round info) of round `index`, None after the last: round 0 is the
        request's own context and visual, later rounds come from the task's doc_to_text."""
        context, _, doc_to_visual, doc_to_text, doc_id, task, split = request.args
        doc, where = self._doc(task, split, doc_id), f"{task} doc {doc_id} round {index}"
        if index == 0:
            return _one_video(doc_to_visual(doc), where), context, None
        visuals, text, terminal, _, info = doc_to_text(doc, previous_output=list(outputs), round_idx=index,
                                                       previous_round_info=info)
        return None if terminal else (_one_video(visuals, where), text, info)


def _from_messages(messages, where: str) -> tuple[str, str]:
    """(video, question) of a chat request's messages: its one video and its user text."""
    chat = ChatMessages(messages=messages)
    if any(m.role == "system" for m in chat.messages):
        raise ValueError(f"{where}: the stc models take their system prompt from model_args (system_prompt=...), "
                         "not from the task's messages")
    images, videos, audios = chat.extract_media()
    video = _one_video([*images, *videos, *audios], where)
    text = "\n".join(c.text for m in chat.messages if m.role == "user" for c in m.content if c.type == "text")
    return video, text


class STCVideoChatModel(STCVideoModel):
    """Chat-protocol model: requests carry (context, doc_to_messages, generation_kwargs, ...)."""

    is_simple = False

    def _offline_request(self, request) -> tuple[str, str, dict]:
        _, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
        video, text = _from_messages(doc_to_messages(self._doc(task, split, doc_id)), f"{task} doc {doc_id}")
        return video, text, gen_kwargs

    @staticmethod
    def _gen_kwargs(request) -> dict:
        return request.args[2]

    def _round(self, request, index: int, outputs: list[str], info):
        _, doc_to_messages, _, doc_id, task, split = request.args
        doc, where = self._doc(task, split, doc_id), f"{task} doc {doc_id} round {index}"
        if index == 0:
            return (*_from_messages(doc_to_messages(doc), where), None)
        payload = doc_to_messages(doc, round_idx=index, previous_output=list(outputs), previous_round_info=info)
        if not (isinstance(payload, tuple) and len(payload) == 4):
            raise ValueError(f"{where}: doc_to_messages gave no (messages, terminal, outputs, info) round payload")
        messages, terminal, _, info = payload
        return None if terminal else (*_from_messages(messages, where), info)


def _family(name: str, model_id: str, families: tuple[str, ...], doc: str):
    simple = type(name, (STCVideoModel,), {"model_id": model_id, "families": families, "__doc__": doc, "__module__": __name__})
    chat = type(name + "Chat", (STCVideoChatModel,), {"model_id": model_id, "families": families, "__doc__": doc, "__module__": __name__})
    return simple, chat


STCLlavaOneVision, STCLlavaOneVisionChat = _family("STCLlavaOneVision", "stc_llava_onevision", ("llava_onevision",),
                                                   "LLaVA-OneVision with STC")
STCQwen2VL, STCQwen2VLChat = _family("STCQwen2VL", "stc_qwen2_vl", ("qwen2_vl",), "Qwen2-VL with STC")
STCQwen25VL, STCQwen25VLChat = _family("STCQwen25VL", "stc_qwen2_5_vl", ("qwen2_5_vl",), "Qwen2.5-VL with STC")
STCQwen3VL, STCQwen3VLChat = _family("STCQwen3VL", "stc_qwen3_vl", ("qwen3_vl", "qwen3_vl_moe"), "Qwen3-VL with STC")
STCQwen35, STCQwen35Chat = _family("STCQwen35", "stc_qwen3_5", ("qwen3_5", "qwen3_5_moe"), "Qwen3.5 with STC")
