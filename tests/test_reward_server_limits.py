"""The reward server under hostile or careless clients (issue 24, item 3): pixel caps answered before decoding,
a pixel budget per merged call that keeps small requests moving, Host / Origin / token checks, a 4xx with its
reason for every bad request (which the remote reward never retries), bounded connections, and a named error
for a port out of range. Everything runs on 127.0.0.1."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator

import pytest
import torch
from safetensors.torch import save

from vgpo.errors import ConfigError, RewardError
from vgpo.rewards import build_reward, register_reward
from vgpo.rewards.remote import RemoteReward
from vgpo.rewards.server import RewardServer
from vgpo.rewards.wire import encode_json, encode_multipart, encode_safetensors

CALLS: list[int] = []  # images per reward call of the recording reward below


@register_reward("test_limits_recorder")
def make_recorder(seconds_per_image: float = 0.0, **_: object):
    """Mean brightness x (1 + metadata['bonus']), sleeping ``seconds_per_image`` per image (a slow reward) and
    recording each call's image count in CALLS."""

    def reward(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        CALLS.append(int(images.shape[0]))
        time.sleep(seconds_per_image * images.shape[0])
        bonus = torch.tensor([float(m.get("bonus", 0.0)) for m in metadata])
        return images.mean(dim=(1, 2, 3)) * (1.0 + bonus)

    return reward


def request(
    url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """(status, headers, body text) of one request over http.client (which lets a test set the Host header)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def score(url: str, body: bytes, content_type: str, **headers: str) -> tuple[int, str]:
    status, _, text = request(url, "POST", "/score", body, {"Content-Type": content_type, **headers})
    return status, text


@pytest.fixture
def recorder() -> Iterator[RewardServer]:
    CALLS.clear()
    with RewardServer(build_reward("test_limits_recorder"), "recorder", max_request_pixels=10_000) as server:
        yield server


# -- pixel caps, before decoding -------------------------------------------------------------------------------


def test_safetensors_requests_have_a_pixel_cap_read_from_the_header(recorder: RewardServer) -> None:
    images = torch.full((3, 3, 64, 64), 0.5)
    status, text = score(recorder.url, *encode_safetensors(images[:2], ["a", "b"], [{}, {}]))
    assert status == 200, text  # 2 x 64 x 64 = 8192 pixels: under the cap of 10 000
    status, text = score(recorder.url, *encode_safetensors(images, ["a", "b", "c"], [{}, {}, {}]))
    assert status == 413 and "12288 pixels" in text and "limit of 10000 pixels" in text, text
    # a header declaring 25M pixels with no data behind it: refused by the cap before anything is loaded
    header = json.dumps({"images": {"dtype": "U8", "shape": [1, 3, 5000, 5000], "data_offsets": [0, 75_000_000]}})
    status, text = score(recorder.url, struct.pack("<Q", len(header)) + header.encode(), "application/x-safetensors")
    assert status == 413 and "25000000 pixels" in text, text
    status, text = score(recorder.url, *encode_json(images[:1].expand(3, 3, 64, 64), ["a"] * 3, [{}] * 3))
    assert status == 413 and "12288 pixels" in text, text
    assert CALLS == [2]  # only the request under the cap reached the reward


def test_the_remote_reward_splits_its_batches_by_the_pixel_cap(recorder: RewardServer) -> None:
    images = torch.rand(7, 3, 40, 40)  # 1600 pixels an image: 6 fit the 10 000-pixel cap
    metadata = [{"bonus": k} for k in range(7)]
    scores = RemoteReward(recorder.url, image_format="safetensors")(images, ["p"] * 7, metadata)
    expected = build_reward("test_limits_recorder")(images, ["p"] * 7, metadata)
    assert torch.equal(scores, expected)
    assert recorder.health()["requests"] == 2


def test_merged_calls_keep_to_the_pixel_budget() -> None:
    """Three concurrent requests of 3 images of 16 x 16 under a budget of 2 images a call: every call holds at
    most 2 images, and each request gets its own scores."""
    CALLS.clear()
    server = RewardServer(build_reward("test_limits_recorder"), "recorder", max_batch_pixels=2 * 16 * 16, max_wait=0.2)
    with server:
        torch.manual_seed(0)
        images = torch.rand(9, 3, 16, 16)
        metadata = [{"bonus": k} for k in range(9)]
        expected = build_reward("test_limits_recorder")(images, ["p"] * 9, metadata)
        CALLS.clear()
        results: dict[int, torch.Tensor] = {}

        def client(index: int) -> None:
            part = slice(3 * index, 3 * index + 3)
            remote = RemoteReward(server.url, image_format="safetensors", retries=0)
            results[index] = remote(images[part], ["p"] * 3, metadata[part])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
    assert torch.equal(torch.cat([results[i] for i in range(3)]), expected)
    assert sum(CALLS) == 9 and max(CALLS) <= 2, CALLS


def test_a_small_request_is_answered_while_a_large_one_is_scored() -> None:
    """A slow reward (0.05 s an image) and a budget of 2 images a call: a 24-image request takes ~1.2 s in 12
    calls; a 1-image request (of another size) sent while it runs is answered after about one call, long before
    the large one."""
    CALLS.clear()
    reward = build_reward("test_limits_recorder", options={"test_limits_recorder": {"seconds_per_image": 0.05}})
    with RewardServer(reward, "slow", max_batch_pixels=2 * 32 * 32, max_wait=0.0) as server:
        big, small = torch.rand(24, 3, 32, 32), torch.rand(1, 3, 16, 16)  # sizes differ: never one call
        finished: dict[str, float] = {}

        def send(name: str, images: torch.Tensor) -> None:
            status, text = score(server.url, *encode_safetensors(images, ["p"] * len(images), [{}] * len(images)))
            assert status == 200, text
            finished[name] = time.perf_counter()

        large = threading.Thread(target=send, args=("big", big))
        large.start()
        while not CALLS:  # the large request is being scored
            time.sleep(0.005)
        sent = time.perf_counter()
        send("small", small)
        large.join(timeout=30)
    small_seconds, big_seconds = finished["small"] - sent, finished["big"] - sent
    print(f"\nsmall request answered in {small_seconds:.2f} s; the large one finished {big_seconds:.2f} s after it")
    assert finished["small"] < finished["big"]
    assert small_seconds < 0.6, small_seconds  # one or two calls of 0.1 s plus HTTP; the whole large one is 1.2 s


# -- Host, Origin, token ---------------------------------------------------------------------------------------


def test_a_foreign_host_header_is_refused(recorder: RewardServer) -> None:
    """DNS rebinding: a page on evil.example re-pointed at 127.0.0.1 sends Host: evil.example."""
    port = recorder.server_address[1]
    status, _, text = request(recorder.url, "GET", "/health", headers={"Host": f"evil.example:{port}"})
    assert status == 400 and "Invalid host header" in text
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        status, _, text = request(recorder.url, "GET", "/health", headers={"Host": host})
        assert status == 200 and json.loads(text)["reward"] == "recorder", host


def test_a_browser_origin_is_refused_unless_allowed(recorder: RewardServer) -> None:
    """A web page's form post (multipart, no preflight) carries its Origin: refused before the reward runs."""
    body, content_type = encode_multipart(torch.rand(1, 3, 8, 8), ["p"], [{}])
    status, text = score(recorder.url, body, content_type, Origin="http://evil.example")
    assert status == 403 and "browser origin 'http://evil.example' are refused" in text and "--allow-origin" in text
    assert CALLS == []
    with RewardServer(
        build_reward("test_limits_recorder"), "recorder", allowed_origins=["http://localhost:3000"]
    ) as server:
        status, headers, text = request(
            server.url, "POST", "/score", body, {"Content-Type": content_type, "Origin": "http://localhost:3000"}
        )
        assert status == 200 and headers.get("access-control-allow-origin") == "http://localhost:3000", text
        status, text = score(server.url, body, content_type, Origin="http://evil.example")
        assert status == 403


def test_a_token_guards_every_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with RewardServer(build_reward("test_limits_recorder"), "recorder", token="s3cret") as server:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            status, answer_headers, text = request(server.url, "GET", "/health", headers=headers)
            assert status == 401 and "VGPO_REWARD_TOKEN" in text and answer_headers["www-authenticate"] == "Bearer"
        with pytest.raises(RewardError, match="HTTP 401"):
            RemoteReward(server.url, retries=3, backoff=0.0)(torch.rand(1, 3, 8, 8), ["p"], [{}])
        monkeypatch.setenv("VGPO_REWARD_TOKEN", "s3cret")
        images = torch.rand(2, 3, 8, 8)
        scores = RemoteReward(server.url, image_format="safetensors")(images, ["p", "q"], [{}, {}])
        assert torch.equal(scores, images.mean(dim=(1, 2, 3)))


def test_a_non_loopback_bind_needs_a_token() -> None:
    with pytest.raises(ConfigError, match=r"non-loopback address '0\.0\.0\.0' needs a bearer token.*VGPO_REWARD_TOKEN"):
        RewardServer(build_reward("test_limits_recorder"), "recorder", host="0.0.0.0")


# -- a 4xx with its reason for every bad request ---------------------------------------------------------------


def png_with_size(width: int, height: int) -> bytes:
    """A PNG signature and an IHDR chunk declaring ``width`` x ``height`` (8-bit RGB), then IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def safetensors_with_metadata(images: torch.Tensor, header_metadata: object) -> bytes:
    """A safetensors body of ``images`` whose ``__metadata__`` is ``header_metadata`` (any JSON)."""
    body = save({"images": images.contiguous()})
    size = int.from_bytes(body[:8], "little")
    header = json.loads(body[8 : 8 + size])
    header["__metadata__"] = header_metadata
    text = json.dumps(header).encode()
    pad = (8 - len(text) % 8) % 8
    return struct.pack("<Q", len(text) + pad) + text + b" " * pad + body[8 + size :]


def bad_requests() -> list[tuple[str, bytes, str, int, str]]:
    """(name, body, content type, expected status, expected words) of bad requests."""
    image = torch.rand(1, 3, 8, 8)
    deep = "[" * 100_000 + "]" * 100_000
    return [
        (
            "metadata of the wrong type for the reward",
            encode_json(image, ["p"], [{"objects": 5}])[0],
            "application/json",
            422,
            "reward 'compositional' could not score this request: TypeError",
        ),
        (
            "metadata entries that are not objects",
            encode_json(image, ["p"], [{}])[0].replace(b'"metadata": [{}]', b'"metadata": ["x"]'),
            "application/json",
            400,
            "'metadata' must be a JSON list of objects",
        ),
        (
            "safetensors metadata values that are not strings",
            safetensors_with_metadata(image, {"prompts": ["p"]}),
            "application/x-safetensors",
            400,
            "__metadata__ must map names to JSON strings",
        ),
        (
            "safetensors metadata that is a list",
            safetensors_with_metadata(image, ["p"]),
            "application/x-safetensors",
            400,
            "__metadata__ must map names to JSON strings",
        ),
        (
            "an image of shape [1, 3, 0, 0]",
            encode_safetensors(torch.zeros(1, 3, 0, 0), ["p"], [{}])[0],
            "application/x-safetensors",
            400,
            "shape [1, 3, 0, 0]; send at least one image of at least one pixel",
        ),
        (
            "a PNG of 0 x 0 pixels",
            json.dumps({"images_png": [base64.b64encode(png_with_size(0, 0)).decode()]}).encode(),
            "application/json",
            400,
            "image 0 is 0 x 0; an image needs at least one pixel",
        ),
        (
            "a deeply nested JSON body",
            ('{"images_png": [], "x": ' + deep + "}").encode(),
            "application/json",
            400,
            "nested too deeply",
        ),
        (
            "deeply nested safetensors metadata",
            safetensors_with_metadata(image, {"prompts": deep}),
            "application/x-safetensors",
            400,
            "nested too deeply",
        ),
        (
            "float images outside [0, 1]",
            encode_safetensors(image * 3 - 1, ["p"], [{"objects": []}])[0],
            "application/x-safetensors",
            400,
            "float images must lie in [0, 1]",
        ),
        (
            "an image list entry that is not a string",
            b'{"images_png": [5], "prompts": ["p"]}',
            "application/json",
            400,
            "images_png[0] must be a base64 string",
        ),
    ]


@pytest.fixture(scope="module")
def compositional() -> Iterator[RewardServer]:
    with RewardServer(build_reward("compositional"), "compositional") as server:
        yield server


@pytest.mark.parametrize("case", bad_requests(), ids=lambda case: case[0])
def test_every_bad_request_gets_a_4xx_with_its_reason(
    compositional: RewardServer, case: tuple[str, bytes, str, int, str]
) -> None:
    _, body, content_type, expected_status, words = case
    status, text = score(compositional.url, body, content_type)
    assert status == expected_status and words in json.loads(text)["error"], (status, text)


def test_a_non_ascii_content_length_gets_400(compositional: RewardServer) -> None:
    host, port = compositional.server_address
    # b"\xb2" is "²" in latin-1, which str.isdigit() accepts and int() refuses: the old server dropped the
    # connection without an answer; h11 accepts ASCII digits only
    for length in (b"\xb2", b"1\xb2", "\u0661\u0662".encode(), b"1 2", b"-5"):
        with socket.create_connection((host, port), timeout=10) as connection:
            connection.sendall(
                b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: "
                + length
                + b"\r\n\r\n{}"
            )
            answer = connection.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400"), (length, answer)


def test_an_unknown_endpoint_gets_a_json_404(compositional: RewardServer) -> None:
    status, _, text = request(compositional.url, "GET", "/nope")
    assert status == 404 and "use GET /health or POST /score" in json.loads(text)["error"]
    status, _, text = request(compositional.url, "GET", "/score")
    assert status == 405


def test_the_remote_reward_sends_a_request_the_server_refuses_once(compositional: RewardServer) -> None:
    """Bad metadata is the request's fault (422): one attempt, then a RewardError with the server's reason."""
    remote = RemoteReward(compositional.url, retries=3, backoff=0.0)
    with pytest.raises(RewardError, match=r"HTTP 422: reward 'compositional' could not score this request"):
        remote(torch.rand(1, 3, 8, 8), ["p"], [{"objects": 5}])
    assert remote.attempts == 2  # GET /health, then one POST /score


# -- the remote reward's retry rule, against a scripted stand-in server ----------------------------------------


class ScriptedServer(http.server.ThreadingHTTPServer):
    """Answers every POST with ``status`` and ``body``, counting the POSTs (GET /health answers the limits)."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body, self.posts = status, body, 0
        super().__init__(("127.0.0.1", 0), ScriptedHandler)


class ScriptedHandler(http.server.BaseHTTPRequestHandler):
    server: ScriptedServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(200, json.dumps({"max_request_bytes": 1 << 20, "max_request_pixels": 1 << 20}).encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts += 1
        self._answer(self.server.status, self.server.body)


@pytest.mark.parametrize(
    ("status", "body", "posts", "message"),
    [
        (400, b'{"error": "bad image"}', 1, "refused POST /score .*HTTP 400: bad image"),
        (403, b"Invalid host header", 1, "HTTP 403: Invalid host header"),
        (413, b'{"error": "oversized request"}', 1, "HTTP 413: oversized request"),
        (422, b'{"error": "no spec"}', 1, "HTTP 422: no spec"),
        (200, b"<html>not json</html>", 1, "not JSON"),
        (500, b'{"error": "boom"}', 3, "after 3 attempts .*HTTP 500: boom"),
        (503, b'{"error": "busy"}', 3, "after 3 attempts .*HTTP 503: busy"),
    ],
)
def test_the_remote_reward_retries_only_5xx(status: int, body: bytes, posts: int, message: str) -> None:
    server = ScriptedServer(status, body)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(RewardError, match=message):
            RemoteReward(url, retries=2, backoff=0.0)(torch.rand(1, 3, 8, 8), ["p"], [{}])
        assert server.posts == posts
    finally:
        server.shutdown()
        server.server_close()


# -- bounded connections and timeouts --------------------------------------------------------------------------


def test_connections_are_capped_and_slow_bodies_time_out() -> None:
    with RewardServer(build_reward("test_limits_recorder"), "recorder", max_connections=2, read_timeout=0.3) as server:
        host, port = server.server_address
        # a body that never finishes: 408 after the read timeout, not a connection held forever
        with socket.create_connection((host, port), timeout=10) as slow:
            slow.sendall(b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
            began = time.perf_counter()
            answer = b""
            while chunk := slow.recv(4096):  # the server closes the connection after its answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408") and b"took longer than 0.3 s" in answer, answer
            assert time.perf_counter() - began < 5
        # two idle connections fill the cap: the next request is turned away with 503 instead of a thread each
        idle = [socket.create_connection((host, port), timeout=10) for _ in range(2)]
        try:
            time.sleep(0.1)
            status, _, _ = request(server.url, "GET", "/health")
            assert status == 503
        finally:
            for connection in idle:
                connection.close()
        time.sleep(0.1)
        assert request(server.url, "GET", "/health")[0] == 200


# -- a port out of range ---------------------------------------------------------------------------------------


def test_a_port_out_of_range_is_a_named_error(capsys: pytest.CaptureFixture[str]) -> None:
    from vgpo.cli import main

    assert main(["serve-reward", "compositional", "--port", "70000"]) == 2
    error = capsys.readouterr().err
    assert "--port must be from 0 to 65535" in error and "Traceback" not in error
    with pytest.raises(ConfigError, match="port must be an integer from 0 to 65535"):
        RewardServer(build_reward("test_limits_recorder"), "recorder", port=-1)
