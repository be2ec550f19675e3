"""Reward "remote": a reward served by `vgpo serve-reward` (or any server speaking `vgpo.rewards.wire`).

It has the interface of a local reward, ``(images, prompts, metadata) -> scores [N]``. A call sends the
images in requests that fit the server's limits on bytes and pixels (read once from ``GET /health``), retries
a connection failure, a timeout or a 5xx answer ``retries`` times with a short backoff, and either returns
every score or raises a :class:`~vgpo.errors.RewardError` naming the URL: never a partial batch, never an
unbounded wait (each socket operation times out after ``timeout`` seconds). A 4xx answer is the request's
fault and is never retried; neither is a 2xx answer that is not the expected JSON. Scoring is a pure function
of the request, so re-sending a request after a failure is safe. When the environment variable named by
``token_env`` (``VGPO_REWARD_TOKEN``) is set, every request carries ``Authorization: Bearer`` its value.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

import torch

from vgpo.errors import ConfigError, RewardError
from vgpo.rewards import register_reward
from vgpo.rewards.wire import ENCODERS


class RemoteReward:
    """Scores [N] float32 from the reward server at ``url`` for images [N, 3, H, W] in [0, 1]."""

    def __init__(
        self,
        url: str,
        timeout: float = 60.0,
        retries: int = 2,
        image_format: str = "png",
        backoff: float = 0.5,
        token_env: str = "VGPO_REWARD_TOKEN",
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.image_format = image_format
        self.backoff = backoff
        self.token_env = token_env
        self.name = f"remote {self.url}"
        self.attempts = 0  # HTTP requests sent, retries included
        self._max_request_bytes: int | None = None
        self._max_request_pixels: int | None = None

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Content-Type": content_type} if content_type else {}
        token = os.environ.get(self.token_env)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    # -- HTTP with retries -------------------------------------------------------------------------------

    def _send(self, request: urllib.request.Request, what: str) -> Any:
        """The JSON answer to ``request``, retried on connection failures, timeouts and 5xx answers only."""
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self.attempts += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as error:
                message = _error_message(error)
                if error.code < 500:  # the request's fault: sending it again gets the same answer
                    raise RewardError(
                        f"reward server {self.url} refused {what}: HTTP {error.code}: {message}"
                    ) from None
                last_error = f"HTTP {error.code}: {message}"
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
                reason = getattr(error, "reason", error)
                last_error = f"{type(reason).__name__}: {reason}"
                continue
            try:
                return json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise RewardError(
                    f"reward server {self.url} answered {what} with something that is not JSON ({error}): "
                    f"{raw[:200]!r}; is {self.url} a `vgpo serve-reward` server?"
                ) from None
        raise RewardError(
            f"reward server {self.url} did not answer {what} after {self.retries + 1} attempts "
            f"(timeout {self.timeout:g} s each; last error: {last_error}); start it with "
            f"`vgpo serve-reward REWARD --port PORT`, or fix task.reward_options.remote.url / timeout / retries"
        )

    def health(self) -> dict[str, Any]:
        """The server's ``GET /health`` answer (its reward, size limit and counters)."""
        answer = self._send(urllib.request.Request(f"{self.url}/health", headers=self._headers()), "GET /health")
        if not isinstance(answer, dict):
            raise RewardError(f"reward server {self.url} answered GET /health with {answer!r}, not a JSON object")
        return answer

    def _limit(self) -> int:
        if self._max_request_bytes is None:
            health = self.health()
            self._max_request_bytes = int(health.get("max_request_bytes", 64 * 1024 * 1024))
            if self._max_request_pixels is None:
                self._max_request_pixels = int(health.get("max_request_pixels", 1 << 24))
        return self._max_request_bytes

    # -- the reward ----------------------------------------------------------------------------------------

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        count = images.shape[0]
        if len(prompts) != count or len(metadata) != count:
            raise RewardError(f"{self.name}: {count} images but {len(prompts)} prompts and {len(metadata)} metadata")
        if count == 0:
            return torch.zeros(0, dtype=torch.float32)
        encode = ENCODERS[self.image_format]
        limit = self._limit()
        pixels_per_image = int(images.shape[2]) * int(images.shape[3])
        max_pixels = self._max_request_pixels or 1 << 24
        if pixels_per_image > max_pixels:
            raise RewardError(
                f"one image of {images.shape[3]} x {images.shape[2]} pixels is over the {max_pixels}-pixel request "
                f"limit of reward server {self.url}; restart it with a larger --max-request-pixels"
            )
        scores: list[float] = []
        start = 0
        per_request = min(count, max_pixels // pixels_per_image)
        while start < count:
            stop = min(count, start + per_request)
            body, content_type = encode(images[start:stop], prompts[start:stop], metadata[start:stop])
            if len(body) > limit:
                if stop - start == 1:
                    raise RewardError(
                        f"one image makes a request of {len(body)} bytes, over the {limit}-byte limit of reward "
                        f"server {self.url}; restart it with a larger --max-request-mb"
                    )
                per_request = max(1, (stop - start) * limit // (len(body) * 2))  # halve below the limit, then go on
                continue
            request = urllib.request.Request(
                f"{self.url}/score", data=body, headers=self._headers(content_type), method="POST"
            )
            answer = self._send(request, f"POST /score ({stop - start} images)")
            part = answer.get("scores") if isinstance(answer, dict) else None
            if not isinstance(part, list) or len(part) != stop - start:
                raise RewardError(
                    f"reward server {self.url} answered {stop - start} images with {answer!r:.200}; "
                    "expected {'scores': [one number per image]}"
                )
            scores.extend(float(s) for s in part)
            start = stop
        return torch.tensor(scores, dtype=torch.float32)


def _error_message(error: urllib.error.HTTPError) -> str:
    """The server's reason: the ``error`` of a JSON answer, else the start of the body, else the status text."""
    try:
        body = error.read()
    except (OSError, http.client.HTTPException):
        return str(error.reason)
    try:
        answer = json.loads(body)
        return str(answer.get("error", answer)) if isinstance(answer, dict) else str(answer)
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = body[:300].decode("utf-8", "replace").strip()
        return text or str(error.reason)


@register_reward("remote")
def make_remote_reward(
    url: str | None = None,
    timeout: float = 60.0,
    retries: int = 2,
    image_format: str = "png",
    token_env: str = "VGPO_REWARD_TOKEN",
    **_: Any,
) -> RemoteReward:
    """Factory of the remote reward: ``url`` of a `vgpo serve-reward` server (e.g. http://127.0.0.1:8765),
    ``timeout`` seconds per socket operation, ``retries`` after the first attempt, ``image_format`` png
    (8-bit, compact), multipart (PNG parts) or safetensors (float32, exact), ``token_env`` the environment
    variable holding the server's bearer token (a token is a secret: it never sits in a config file)."""
    if not url or not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"reward 'remote' needs task.reward_options.remote.url, an http(s) URL such as http://127.0.0.1:8765; "
            f"got {url!r}"
        )
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"task.reward_options.remote.timeout must be a positive number of seconds, got {timeout!r}")
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ConfigError(f"task.reward_options.remote.retries must be an integer >= 0, got {retries!r}")
    if image_format not in ENCODERS:
        raise ConfigError(
            f"task.reward_options.remote.image_format must be one of {', '.join(ENCODERS)}, got {image_format!r}"
        )
    if not isinstance(token_env, str) or not token_env:
        raise ConfigError(f"task.reward_options.remote.token_env must name an environment variable, got {token_env!r}")
    return RemoteReward(url, timeout=float(timeout), retries=retries, image_format=image_format, token_env=token_env)
