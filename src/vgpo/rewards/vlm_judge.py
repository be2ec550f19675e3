"""Rewards "unifiedreward" and "deqa": vision-language judges behind an OpenAI-compatible chat endpoint.

Both models are too large to run beside the policy, so (as in the baseline) they are served separately, e.g.
``python -m sglang.launch_server --model-path CodeGoat24/UnifiedReward-7b-v1.5 --port 17140`` or
``vllm serve ...``; these rewards send one ``POST {url}/chat/completions`` per image, concurrently (at most
``max_concurrency`` in flight), each with a timeout and ``retries`` further attempts on connection errors,
timeouts and 5xx answers (a 4xx is the request's fault and is not retried). Images go as PNG in a base64 data URL
(``data:image/png;base64,...``); nothing is pickled.

**unifiedreward** (UnifiedReward, Wang et al. 2025), as the baseline calls it (Flow-GRPO ``flow_grpo/rewards.py``,
``unifiedreward_score_sglang``): the image resized to 512 x 512, then the user message [image, text] with the
text below (``<image>`` prefix included, temperature 0, served model name ``UnifiedReward-7b-v1.5``), and the score
is the number after ``Final Score:`` matched by ``Final Score:\\s*([1-5](?:\\.\\d+)?)``. ``template: unifiedreward``
selects instead the point-score prompt of the UnifiedReward repository
(``inference_qwen/image_generation/qwen_point_score_image_generation.py``), which also asks for the caption's
elements. The baseline scores an answer without a score 0; here it is an :class:`UnparsableAnswerError` naming
the image and quoting the answer, unless ``unparsable_score`` is set, in which case that score is used and a
warning counts the cases (never a silent zero).

**deqa** (DeQA-Score, You et al. 2025, ``zhiyuanyou/DeQA-Score`` ``src/evaluate/scorer.py``): the model is asked
"How would you rate the quality of this image?" with the answer begun as "The quality of the image is", and the
score is the expectation of the level weights 5, 4, 3, 2, 1 under the softmax of the next-token logits of the words
excellent, good, fair, poor, bad. Through a chat endpoint: the assistant turn is prefilled with that phrase
(``continue_final_message: true, add_generation_prompt: false``, vLLM's and sglang's extension), one token is
generated with ``logprobs`` and ``top_logprobs`` (20 by default), and the softmax over the five words is their
renormalised probabilities among the returned alternatives (equal to the original when all five are returned; a
word outside the top ``top_logprobs`` counts as probability 0). A token counts for a level when, stripped of
leading spaces (``" good"`` or SentencePiece's ``"▁good"``), it is the lower-case word, as the original takes the
id of the word with its leading-space marker. An answer with none of the five words, or without logprobs, is an
:class:`UnparsableAnswerError`.

Both report the 1-5 scale of the VGPO paper's Table 1 (SD3.5-M: UnifiedReward 3.07, DeQA 4.07);
``normalize: true`` divides by 5 as the baseline's training rewards do.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from vgpo.errors import ConfigError, RewardError
from vgpo.rewards import register_reward

# Flow-GRPO flow_grpo/rewards.py, unifiedreward_score_sglang: the question sent with each image
UNIFIEDREWARD_FLOW_GRPO = (
    "<image>\nYou are given a text caption and a generated image based on that caption. Your task is to evaluate "
    "this image based on two key criteria:\n1. Alignment with the Caption: Assess how well this image aligns with "
    "the provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as "
    "described in the caption.\n2. Overall Image Quality: Examine the visual quality of this image, including "
    "clarity, detail preservation, color accuracy, and overall aesthetic appeal.\nBased on the above criteria, "
    "assign a score from 1 to 5 after 'Final Score:'.\nYour task is provided as follows:\nText Caption: [{prompt}]"
)
# UnifiedReward repository, inference_qwen/image_generation/qwen_point_score_image_generation.py
UNIFIEDREWARD_POINT_SCORE = (
    "You are given a text caption and a generated image based on that caption. Your task is to evaluate this image "
    "based on two key criteria:\n1. Alignment with the Caption: Assess how well this image aligns with the provided "
    "caption. Consider the accuracy of depicted objects, their relationships, and attributes as described in the "
    "caption.\n2. Overall Image Quality: Examine the visual quality of this image, including clarity, detail "
    "preservation, color accuracy, and overall aesthetic appeal.\nExtract key elements from the provided text "
    "caption, evaluate their presence in the generated image using the format: 'element (type): value' (where "
    "value=0 means not generated, and value=1 means generated), and assign a score from 1 to 5 after "
    "'Final Score:'.\nYour task is provided as follows:\nText Caption: [{prompt}]"
)
UNIFIEDREWARD_TEMPLATES = {"flow_grpo": UNIFIEDREWARD_FLOW_GRPO, "unifiedreward": UNIFIEDREWARD_POINT_SCORE}
FINAL_SCORE = re.compile(r"Final Score:\s*([1-5](?:\.\d+)?)")  # Flow-GRPO's _extract_scores pattern
UNIFIEDREWARD_SIZE = 512  # Flow-GRPO resizes every image to 512 x 512 before sending it

# DeQA-Score src/evaluate/scorer.py: the question, the answer's beginning, the level words and their weights
DEQA_QUESTION = "How would you rate the quality of this image?"
DEQA_ANSWER_PREFIX = "The quality of the image is"
DEQA_LEVELS = {"excellent": 5.0, "good": 4.0, "fair": 3.0, "poor": 2.0, "bad": 1.0}

MAX_SCORE = 5.0


class UnparsableAnswerError(RewardError):
    """A judge answered, but its answer holds no score (no "Final Score:", no level word, no logprobs)."""


def image_data_url(image: torch.Tensor, size: int | None) -> str:
    """[3, H, W] float in [0, 1] -> ``data:image/png;base64,...`` (8-bit, resized to size x size when given)."""
    from PIL import Image

    from vgpo.scoring.images import images_to_uint8

    array = images_to_uint8(image[None])[0]  # [H, W, 3]
    picture = Image.fromarray(array)
    if size is not None and picture.size != (size, size):
        picture = picture.resize((size, size), Image.Resampling.BICUBIC)  # PIL's default, as in Flow-GRPO
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _endpoint(url: str) -> str:
    """``http://host:port/v1`` (or the full ``.../chat/completions``) -> the chat-completions URL."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


class ChatClient:
    """Posts chat-completion requests with a timeout, retries with exponential backoff, and a concurrency bound."""

    def __init__(
        self,
        url: str,
        timeout: float,
        retries: int,
        max_concurrency: int,
        backoff: float,
        api_key: str | None,
        label: str,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{label} url must start with http:// or https://, got {url!r}")
        if timeout <= 0 or retries < 0 or max_concurrency < 1 or backoff < 0:
            raise ConfigError(
                f"{label} needs timeout > 0, retries >= 0, max_concurrency >= 1 and backoff >= 0; got timeout="
                f"{timeout}, retries={retries}, max_concurrency={max_concurrency}, backoff={backoff}"
            )
        self.url = _endpoint(url)
        self.timeout = timeout
        self.retries = retries
        self.max_concurrency = max_concurrency
        self.backoff = backoff
        self.api_key = api_key
        self.label = label

    def post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One request -> the decoded JSON answer; RewardError naming the URL after the last failed attempt."""
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 30.0))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    text = response.read().decode("utf-8", errors="replace")
            except urllib.error.HTTPError as error:
                detail = error.read().decode("utf-8", errors="replace")[:300]
                if error.code < 500:  # the request itself is wrong: retrying cannot help
                    raise RewardError(
                        f"{self.label}: chat server {self.url} refused the request (HTTP {error.code}: {detail}); "
                        "check the model name and that the server serves a vision-language chat model"
                    ) from error
                last = f"HTTP {error.code}: {detail}"
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
                reason = getattr(error, "reason", error)
                last = f"{type(reason).__name__}: {reason}"
                continue
            try:
                answer = json.loads(text)
            except json.JSONDecodeError as error:
                raise UnparsableAnswerError(
                    f"{self.label}: chat server {self.url} answered with non-JSON: {text[:200]!r}"
                ) from error
            if not isinstance(answer, dict):
                raise UnparsableAnswerError(f"{self.label}: chat server {self.url} answered {text[:200]!r}")
            return answer
        raise RewardError(
            f"{self.label}: chat server {self.url} failed {self.retries + 1} attempt(s) (timeout {self.timeout:g} s "
            f"each); last error: {last}. Start the server (e.g. sglang or vLLM serving the judge model) or fix the "
            "url option"
        )

    def map(self, payloads: list[dict[str, Any]], parse: Callable[[int, dict[str, Any]], float]) -> list[float]:
        """``parse(index, answer)`` of every payload's answer, in order; at most ``max_concurrency`` in flight."""
        if not payloads:
            return []

        def one(index: int) -> float:
            return parse(index, self.post(payloads[index]))

        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(payloads))) as pool:
            return list(pool.map(one, range(len(payloads))))


def _message_text(answer: dict[str, Any], label: str, index: int) -> str:
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as error:
        raise UnparsableAnswerError(
            f"{label}: the answer for image {index} is not a chat completion (no choices[0].message.content): "
            f"{json.dumps(answer)[:300]}"
        ) from error
    return content if isinstance(content, str) else ""


def parse_final_score(text: str) -> float | None:
    """The score after "Final Score:" (1 to 5, decimals allowed), or None when there is none."""
    match = FINAL_SCORE.search(text)
    return float(match.group(1)) if match else None


def deqa_expectation(top_logprobs: list[dict[str, Any]]) -> float | None:
    """sum_l w_l p_l / sum_l p_l over the level words found among the alternatives (None when none is).

    ``top_logprobs``: [{"token": str, "logprob": float}, ...] of the first generated token. Tokens that are a
    level word after stripping leading spaces / "▁" add their probability to that level.
    """
    mass = dict.fromkeys(DEQA_LEVELS, 0.0)
    for entry in top_logprobs:
        token = str(entry.get("token", "")).lstrip(" ▁")
        logprob = entry.get("logprob")
        if token in mass and isinstance(logprob, (int, float)) and math.isfinite(logprob):
            mass[token] += math.exp(logprob)
    total = sum(mass.values())
    if total <= 0:
        return None
    return sum(DEQA_LEVELS[level] * probability for level, probability in mass.items()) / total


class _JudgeBase:
    """What both judges share: the client, the fallback for unparsable answers, the scale."""

    name = "judge"

    def __init__(self, client: ChatClient, model: str, normalize: bool, unparsable_score: float | None) -> None:
        self.client = client
        self.model = model
        self.normalize = normalize
        self.unparsable_score = unparsable_score
        self._unparsable = 0
        self._lock = threading.Lock()

    def _fallback(self, error: UnparsableAnswerError) -> float:
        """The configured score for an unparsable answer, or the error itself when none is configured."""
        if self.unparsable_score is None:
            raise error
        with self._lock:
            self._unparsable += 1
        return self.unparsable_score

    def _finish(self, scores: list[float]) -> torch.Tensor:
        if self._unparsable:
            warnings.warn(
                f"{self.name}: {self._unparsable} of {len(scores)} answers held no score and were given "
                f"unparsable_score={self.unparsable_score}",
                RuntimeWarning,
                stacklevel=3,
            )
            self._unparsable = 0
        result = torch.tensor(scores, dtype=torch.float32)
        return result / MAX_SCORE if self.normalize else result

    @staticmethod
    def _check(images: torch.Tensor, prompts: list[str], label: str) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise RewardError(f"{label} takes images [N, 3, H, W], got shape {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise RewardError(f"{label} was given {images.shape[0]} images but {len(prompts)} prompts")


class UnifiedRewardJudge(_JudgeBase):
    """UnifiedReward's 1-5 point score of each image against its own prompt (see the module doc)."""

    name = "unifiedreward"

    def __init__(self, client: ChatClient, model: str, template: str, image_size: int | None, **kwargs: Any) -> None:
        super().__init__(client, model, **kwargs)
        if template not in UNIFIEDREWARD_TEMPLATES:
            raise ConfigError(f"unifiedreward template {template!r} is not one of {', '.join(UNIFIEDREWARD_TEMPLATES)}")
        self.template = UNIFIEDREWARD_TEMPLATES[template]
        self.image_size = image_size

    def payload(self, image: torch.Tensor, prompt: str) -> dict[str, Any]:
        """The chat request for one image [3, H, W] and its prompt."""
        content = [
            {"type": "image_url", "image_url": {"url": image_data_url(image, self.image_size)}},
            {"type": "text", "text": self.template.format(prompt=prompt)},
        ]
        return {"model": self.model, "messages": [{"role": "user", "content": content}], "temperature": 0}

    def _parse(self, index: int, answer: dict[str, Any]) -> float:
        text = _message_text(answer, self.name, index)
        score = parse_final_score(text)
        if score is None:
            return self._fallback(
                UnparsableAnswerError(
                    f"unifiedreward: the answer for image {index} has no 'Final Score: <1-5>': {text[:300]!r}; "
                    "check that the server runs a UnifiedReward model, or set the option unparsable_score"
                )
            )
        return score

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        self._check(images, prompts, self.name)
        payloads = [self.payload(image, prompt) for image, prompt in zip(images, prompts, strict=True)]
        return self._finish(self.client.map(payloads, self._parse))


class DeqaJudge(_JudgeBase):
    """DeQA-Score's expected quality level (1-5) of each image, from the logprobs of the level words."""

    name = "deqa"

    def __init__(self, client: ChatClient, model: str, top_logprobs: int, image_size: int | None, **kwargs: Any):
        super().__init__(client, model, **kwargs)
        if not 5 <= top_logprobs <= 20:
            raise ConfigError(f"deqa top_logprobs must be in 5..20 (the OpenAI API's bound), got {top_logprobs}")
        self.top_logprobs = top_logprobs
        self.image_size = image_size

    def payload(self, image: torch.Tensor) -> dict[str, Any]:
        """The chat request for one image [3, H, W]: question, prefilled answer, one token with its logprobs."""
        content = [
            {"type": "image_url", "image_url": {"url": image_data_url(image, self.image_size)}},
            {"type": "text", "text": DEQA_QUESTION},
        ]
        return {
            "model": self.model,
            "messages": [
                {"role": "user", "content": content},
                {"role": "assistant", "content": DEQA_ANSWER_PREFIX},
            ],
            "continue_final_message": True,  # vLLM / sglang: go on from the prefilled answer
            "add_generation_prompt": False,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
        }

    def _parse(self, index: int, answer: dict[str, Any]) -> float:
        try:
            alternatives = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (KeyError, IndexError, TypeError):
            return self._fallback(
                UnparsableAnswerError(
                    f"deqa: the answer for image {index} has no choices[0].logprobs.content[0].top_logprobs "
                    f"({json.dumps(answer)[:300]}); the server must return logprobs (vLLM: --max-logprobs >= "
                    f"{self.top_logprobs}) and honour continue_final_message"
                )
            )
        score = deqa_expectation(alternatives if isinstance(alternatives, list) else [])
        if score is None:
            shown = [entry.get("token") for entry in alternatives[:10]] if isinstance(alternatives, list) else []
            return self._fallback(
                UnparsableAnswerError(
                    f"deqa: none of {', '.join(DEQA_LEVELS)} is among the next-token alternatives for image {index} "
                    f"(top tokens: {shown}); check that the server runs DeQA-Score and continues the prefilled "
                    f"answer {DEQA_ANSWER_PREFIX!r}, or set the option unparsable_score"
                )
            )
        return score

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        self._check(images, prompts, self.name)
        return self._finish(self.client.map([self.payload(image) for image in images], self._parse))


def _client(label: str, url: str, timeout: float, retries: int, max_concurrency: int, backoff: float,
            api_key: str | None) -> ChatClient:  # fmt: skip
    return ChatClient(url, timeout, retries, max_concurrency, backoff, api_key, label)


@register_reward("unifiedreward")
def unifiedreward(
    url: str = "http://127.0.0.1:17140/v1",
    model: str = "UnifiedReward-7b-v1.5",
    timeout: float = 120.0,
    retries: int = 3,
    max_concurrency: int = 32,
    backoff: float = 1.0,
    api_key: str | None = None,
    template: str = "flow_grpo",
    image_size: int | None = UNIFIEDREWARD_SIZE,
    normalize: bool = False,
    unparsable_score: float | None = None,
    **_: Any,
) -> UnifiedRewardJudge:
    """Factory of the UnifiedReward judge (module doc).

    ``url``: the server's OpenAI base URL (Flow-GRPO's default port 17140); ``model``: the served model name;
    ``timeout`` seconds per request; ``retries`` further attempts after a connection error, timeout or 5xx, with
    ``backoff`` * 2^k seconds between; ``max_concurrency`` requests in flight; ``api_key`` if the server wants
    one; ``template``: flow_grpo (the baseline's prompt) | unifiedreward (the repository's point-score prompt);
    ``image_size``: side the image is resized to (None: as generated); ``normalize``: divide by 5;
    ``unparsable_score``: score for an answer without "Final Score:" (None: raise UnparsableAnswerError).
    """
    client = _client("unifiedreward", url, timeout, retries, max_concurrency, backoff, api_key)
    return UnifiedRewardJudge(
        client, model, template, image_size, normalize=normalize, unparsable_score=unparsable_score
    )


@register_reward("deqa")
def deqa(
    url: str = "http://127.0.0.1:18086/v1",
    model: str = "DeQA-Score-Mix3",
    timeout: float = 120.0,
    retries: int = 3,
    max_concurrency: int = 32,
    backoff: float = 1.0,
    api_key: str | None = None,
    top_logprobs: int = 20,
    image_size: int | None = None,
    normalize: bool = False,
    unparsable_score: float | None = None,
    **_: Any,
) -> DeqaJudge:
    """Factory of the DeQA-Score judge (module doc); options as for ``unifiedreward``, plus ``top_logprobs``
    (5..20) alternatives requested for the first answer token. ``image_size`` None sends the image as generated
    (DeQA's own preprocessing pads to a square and resizes in the server)."""
    client = _client("deqa", url, timeout, retries, max_concurrency, backoff, api_key)
    return DeqaJudge(client, model, top_logprobs, image_size, normalize=normalize, unparsable_score=unparsable_score)


__all__ = [
    "ChatClient",
    "DeqaJudge",
    "UnifiedRewardJudge",
    "UnparsableAnswerError",
    "deqa",
    "deqa_expectation",
    "image_data_url",
    "parse_final_score",
    "unifiedreward",
]
