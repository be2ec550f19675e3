"""The reward server and the remote reward: round trips equal the in-process reward, malformed requests get
named 4xx errors, a dead server a named error, and concurrent clients lose no request."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from vgpo.embedded.compositional import CompositionalWorld
from vgpo.errors import ConfigError, RewardError
from vgpo.rewards import build_reward, checked_call, register_reward
from vgpo.rewards.remote import RemoteReward
from vgpo.rewards.server import RewardServer
from vgpo.rewards.wire import encode_json, encode_multipart, encode_safetensors
from vgpo.scoring.images import uint8_to_images

SRC = str(Path(__file__).resolve().parents[1] / "src")


@register_reward("test_server_pixels")
def make_pixel_reward(**_: object):
    """A reward that reads every pixel and the metadata: sum of pixel values x (1 + metadata['bonus'])."""

    def reward(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        bonus = torch.tensor([float(m.get("bonus", 0.0)) for m in metadata])
        return images.flatten(1).sum(dim=1) * (1.0 + bonus) + torch.tensor([len(p) for p in prompts]) / 100

    return reward


def compositional_batch(count: int = 6) -> tuple[torch.Tensor, list[str], list[dict]]:
    world = CompositionalWorld()
    rng = np.random.default_rng(3)
    items = world.sample_items(rng, count)
    images = uint8_to_images([world.render(item, rng) for item in items])
    # half of the images washed out towards grey (graded scores below 1, so a mix-up would show), kept on
    # the 8-bit grid: a PNG carries them exactly
    images[::2] = torch.round((0.4 * images[::2] + 0.3) * 255) / 255
    return images, [i.prompt for i in items], [i.metadata for i in items]


@pytest.fixture
def server() -> Iterator[RewardServer]:
    """The compositional reward served on a free localhost port, with a small size limit."""
    with RewardServer(build_reward("compositional"), "compositional", port=0, max_request_bytes=400_000) as instance:
        yield instance


@pytest.fixture
def pixel_server() -> Iterator[RewardServer]:
    with RewardServer(build_reward("test_server_pixels"), "test_server_pixels", port=0, max_wait=0.02) as instance:
        yield instance


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/score", data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("image_format", ["png", "multipart", "safetensors"])
def test_round_trip_equals_in_process_reward(server: RewardServer, image_format: str) -> None:
    images, prompts, metadata = compositional_batch()
    local = checked_call(build_reward("compositional"), images, prompts, metadata)
    remote = build_reward("remote", options={"remote": {"url": server.url, "image_format": image_format}})
    scores = checked_call(remote, images, prompts, metadata)
    # PNG carries the 8-bit images the checker quantises to anyway; safetensors carries float32 exactly
    assert torch.equal(scores, local), (scores, local)
    assert float(local.min()) < float(local.max()) <= 1.0 and len(set(local.tolist())) >= 3


def test_exact_float_round_trip_and_request_splitting(pixel_server: RewardServer) -> None:
    torch.manual_seed(0)
    images = torch.rand(5, 3, 16, 16)  # not 8-bit values: only safetensors carries them exactly
    prompts, metadata = ["a", "bb", "ccc", "dd", "e"], [{"bonus": k} for k in range(5)]
    local = build_reward("test_server_pixels")(images, prompts, metadata)
    remote = RemoteReward(pixel_server.url, image_format="safetensors")
    remote._max_request_bytes = 9_000  # ~3 KiB an image: forces requests of 1-2 images, in order
    assert torch.equal(remote(images, prompts, metadata), local)
    assert pixel_server.batcher.requests >= 3


def test_health(server: RewardServer) -> None:
    health = RemoteReward(server.url).health()
    assert health["status"] == "ok" and health["reward"] == "compositional"
    assert health["max_request_bytes"] == 400_000


def test_pickle_payload_is_refused(server: RewardServer) -> None:
    images, prompts, metadata = compositional_batch(2)
    payload = pickle.dumps({"images": images.numpy(), "prompts": prompts, "metadata": metadata})
    for content_type in ("application/octet-stream", "application/json", "application/python-pickle"):
        status, answer = post(server.url, payload, content_type)
        assert status == 415 and "pickle payloads are refused" in answer["error"], (content_type, answer)


def test_oversized_request_is_refused(server: RewardServer) -> None:
    status, answer = post(server.url, b"{" + b" " * 500_000 + b"}", "application/json")
    assert status == 413
    assert "oversized request" in answer["error"] and "400000" in answer["error"]


def test_wrong_image_count_bad_image_and_bad_json(server: RewardServer) -> None:
    images, prompts, metadata = compositional_batch(3)
    for encode in (encode_json, encode_multipart, encode_safetensors):
        body, content_type = encode(images, prompts[:2], metadata[:2])
        status, answer = post(server.url, body, content_type)
        assert status == 422 and "image count != prompt count: 3 images but 2 prompts" in answer["error"], answer
    body = json.dumps({"images_png": ["aGVsbG8="], "prompts": ["p"], "metadata": [{}]}).encode()
    status, answer = post(server.url, body, "application/json")
    assert status == 400 and "bad image: image 0 is not a PNG" in answer["error"]
    status, answer = post(server.url, b'{"images_png": [', "application/json")
    assert status == 400 and "bad JSON" in answer["error"]
    status, answer = post(server.url, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}", "application/x-safetensors")
    assert status == 400 and "bad safetensors body" in answer["error"]


def test_remote_reward_reports_server_refusals_and_reward_errors(server: RewardServer) -> None:
    images, prompts, _ = compositional_batch(2)
    remote = RemoteReward(server.url, retries=0)
    with pytest.raises(RewardError, match=r"HTTP 422: reward 'compositional' needs the structured spec"):
        remote(images, prompts, [{}, {}])


def test_dead_server_gives_a_named_error_after_retries() -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    remote = build_reward("remote", options={"remote": {"url": url, "retries": 2, "timeout": 1}})
    assert isinstance(remote, RemoteReward)
    remote.backoff = 0.01
    images, prompts, metadata = compositional_batch(2)
    start = time.perf_counter()
    with pytest.raises(RewardError, match=rf"reward server {url} did not answer .* after 3 attempts"):
        checked_call(remote, images, prompts, metadata)
    assert time.perf_counter() - start < 5


def test_slow_server_times_out_with_a_named_error() -> None:
    import socket

    listener = socket.socket()  # accepts connections (the backlog) and never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        remote = RemoteReward(url, timeout=0.3, retries=1, backoff=0.01)
        remote._max_request_bytes = 1 << 20
        images, prompts, metadata = compositional_batch(1)
        with pytest.raises(RewardError, match=rf"reward server {url} did not answer .*2 attempts.*timed out"):
            remote(images, prompts, metadata)
    finally:
        listener.close()


def test_remote_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"needs task\.reward_options\.remote\.url"):
        build_reward("remote")
    with pytest.raises(ConfigError, match="image_format must be one of png, multipart, safetensors"):
        build_reward("remote", options={"remote": {"url": "http://127.0.0.1:1", "image_format": "jpeg"}})


def test_load_concurrent_clients_lose_no_request(pixel_server: RewardServer) -> None:
    """8 clients x 12 requests of 4 images each, at once: every request answered with its own scores."""
    clients, requests_each, per_request = 8, 12, 4
    torch.manual_seed(1)
    images = torch.randint(0, 256, (clients * requests_each * per_request, 3, 16, 16)).float() / 255
    prompts = [f"prompt {i}" for i in range(images.shape[0])]
    metadata = [{"bonus": i % 7} for i in range(images.shape[0])]
    expected = build_reward("test_server_pixels")(images, prompts, metadata)
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def client(index: int) -> None:
        remote = RemoteReward(pixel_server.url, retries=0, timeout=20)
        try:
            for r in range(requests_each):
                start = (index * requests_each + r) * per_request
                part = slice(start, start + per_request)
                results[start] = remote(images[part], prompts[part], metadata[part])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    seconds = time.perf_counter() - began
    assert not errors, errors
    total = clients * requests_each
    assert len(results) == total  # every request answered
    got = torch.cat([results[start] for start in sorted(results)])
    assert torch.allclose(got, expected, rtol=1e-6), "a request got another request's scores"
    health = pixel_server.health()
    assert health["requests"] == total and health["images"] == total * per_request
    print(
        f"\nload test: {total} requests ({total * per_request} images) from {clients} clients in {seconds:.2f} s: "
        f"{total / seconds:.0f} requests/s, {total * per_request / seconds:.0f} images/s; "
        f"{health['reward_calls']} reward calls (batching merged {total - health['reward_calls']})"
    )


@pytest.fixture(scope="module")
def cli_server() -> Iterator[tuple[subprocess.Popen, str]]:
    """`vgpo serve-reward` in a subprocess on a free localhost port (one process for the module: it takes
    seconds to start); on teardown it must stop on SIGTERM with exit code 0."""
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("VGPO_REWARD_TOKEN", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "vgpo.cli", "serve-reward", '{"compositional": 2.0}', "--port", "0", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "serving reward '2 * compositional' on http://127.0.0.1:" in line, line + process.stderr.read()
        yield process, line.split(" on ")[1].split()[0]
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0


def test_serve_reward_cli_smoke(cli_server: tuple[subprocess.Popen, str]) -> None:
    """`vgpo serve-reward` in a subprocess: serves, scores, refuses pickle (and stops on SIGTERM: the fixture)."""
    _, url = cli_server
    images, prompts, metadata = compositional_batch(3)
    local = 2.0 * build_reward("compositional")(images, prompts, metadata)
    remote = RemoteReward(url, timeout=20)
    assert torch.equal(remote(images, prompts, metadata), local)
    status, answer = post(url, pickle.dumps([1, 2]), "application/octet-stream")
    assert status == 415 and "pickle" in answer["error"]


def peak_rss_mib(pid: int) -> float:
    """The peak resident set size (VmHWM) of process ``pid`` in MiB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # the kernel reports kB
    raise AssertionError("no VmHWM in /proc/PID/status")


MEMORY_BUDGET_MIB = 32
"""How much a refused 5000 x 5000 request may raise the server's peak RSS. Decoding it would take 75 MB as
uint8 and 300 MB as float32 (the issue measured 0.4 -> 3.75 GB before the pixel cap read the headers)."""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc")
def test_a_5000_pixel_flat_png_leaves_the_server_memory_flat(cli_server: tuple[subprocess.Popen, str]) -> None:
    """A 5000 x 5000 flat PNG (25M pixels, ~80 KB) as JSON, multipart and safetensors-shaped requests: each is
    refused (413) from its header, and the server process's peak RSS rises by less than MEMORY_BUDGET_MIB."""
    import base64
    import io

    from PIL import Image

    process, url = cli_server
    buffer = io.BytesIO()
    Image.new("RGB", (5000, 5000), (200, 30, 30)).save(buffer, format="PNG")
    png = buffer.getvalue()
    assert len(png) < 200_000
    images, prompts, metadata = compositional_batch(2)  # warm up: a decoded, scored request
    RemoteReward(url, timeout=20)(images, prompts, metadata)
    before = peak_rss_mib(process.pid)
    began = time.perf_counter()
    body = json.dumps({"images_png": [base64.b64encode(png).decode()], "prompts": ["p"]}).encode()
    status, answer = post(url, body, "application/json")
    assert status == 413 and "25000000 pixels" in answer["error"] and "--max-request-pixels" in answer["error"]
    boundary = "vgpo-test"
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="request"\r\n\r\n{{"prompts": ["p"]}}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, answer = post(url, multipart, f"multipart/form-data; boundary={boundary}")
    assert status == 413 and "25000000 pixels" in answer["error"]
    status, answer = post(url, safetensors_header_only([1, 3, 5000, 5000], "U8"), "application/x-safetensors")
    assert status == 413 and "25000000 pixels" in answer["error"]
    seconds = time.perf_counter() - began
    growth = peak_rss_mib(process.pid) - before
    print(f"\n5000 x 5000 PNG: peak RSS {before:.0f} MiB -> +{growth:.1f} MiB; three 413 answers in {seconds:.2f} s")
    assert growth < MEMORY_BUDGET_MIB


def safetensors_header_only(shape: list[int], dtype: str) -> bytes:
    """A safetensors body whose header declares ``images`` of ``shape`` but carries no tensor data: only a
    server that reads the header before loading answers it with the pixel cap."""
    size = int(np.prod(shape)) * (1 if dtype == "U8" else 4)
    header = json.dumps(
        {"__metadata__": {"prompts": '["p"]'}, "images": {"dtype": dtype, "shape": shape, "data_offsets": [0, size]}}
    ).encode()
    return len(header).to_bytes(8, "little") + header


def test_serve_reward_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from vgpo.cli import main

    assert main(["serve-reward", "no_such_reward", "--port", "0"]) == 2
    assert "unknown reward 'no_such_reward'" in capsys.readouterr().err
    assert main(["serve-reward", "{compositional: 1}", "--port", "0"]) == 2
    assert "the reward spec must be JSON" in capsys.readouterr().err


def test_trainer_with_the_remote_reward_gets_the_local_rewards(tmp_path: Path) -> None:
    """A training iteration's rewards [N, T] through the server (2 requests in flight while sampling) equal the
    in-process reward's, bitwise (safetensors carries the float images exactly)."""
    from fakes import FakePolicy, FakeTask
    from test_trainer import small_config
    from vgpo.trainer import Trainer

    instance = RewardServer(build_reward("brightness"), "brightness", port=0).start()
    try:
        rewards = []
        for reward in (
            build_reward("brightness"),
            build_reward("remote", options={"remote": {"url": instance.url, "image_format": "safetensors"}}),
        ):
            config = small_config(task={"reward_workers": 2})
            trainer = Trainer(config, tmp_path / str(len(rewards)), policy=FakePolicy(), task=FakeTask(), reward=reward)
            rewards.append(trainer.score(trainer.sample(1)).steps)
        assert rewards[0].shape == (8, 4)
        assert torch.equal(rewards[0], rewards[1])
        assert instance.health()["images"] == 8 * 4
    finally:
        instance.shutdown()
        instance.server_close()


def test_a_decompression_bomb_is_refused_before_decoding(server: RewardServer) -> None:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (6000, 6000)).save(buffer, format="PNG")  # 36M pixels in a ~100 kB file
    assert len(buffer.getvalue()) < 400_000
    body = json.dumps({"images_png": [base64.b64encode(buffer.getvalue()).decode()], "prompts": ["p"]}).encode()
    status, answer = post(server.url, body, "application/json")
    assert status == 413 and "oversized request: its images hold 36000000 pixels" in answer["error"]
