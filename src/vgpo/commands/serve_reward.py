"""`vgpo serve-reward NAME_OR_SPEC`: serve a registered reward (or a weighted spec) over HTTP.

Trainers reach it with ``task.reward: remote`` and ``task.reward_options: {remote: {url: http://HOST:PORT}}``.
It binds to 127.0.0.1 unless ``--host`` says otherwise; a non-loopback address needs a bearer token
(``VGPO_REWARD_TOKEN`` or ``--token``), which the trainer sends from its own ``VGPO_REWARD_TOKEN``. Limits and
security defaults: `vgpo.rewards.server` and docs/rewards.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from typing import Any

from vgpo.errors import ConfigError

TOKEN_ENV = "VGPO_REWARD_TOKEN"  # the same name as vgpo.rewards.server.TOKEN_ENV (not imported: it loads torch)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve-reward",
        help="serve a reward over HTTP (POST /score, GET /health)",
        description='Serve a registered reward, or a weighted spec such as \'{"ocr": 1.0, "compositional": 0.5}\', '
        "over HTTP. Bodies are PNG (base64 JSON or multipart) or safetensors with JSON prompts and metadata; "
        "pickle is refused.",
    )
    parser.add_argument("reward", help="a registered reward name, or a JSON object {name: weight}")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=8765, help="port 0-65535 (0 picks a free one; default 8765)")
    parser.add_argument(
        "--options", default=None, help="JSON {reward name: {option: value}}, as task.reward_options in a config"
    )
    parser.add_argument("--max-request-mb", type=float, default=64.0, help="largest request body accepted (MiB)")
    parser.add_argument(
        "--max-request-pixels",
        type=int,
        default=1 << 24,
        help="most pixels (height x width, summed over its images) one request may hold; read from the image "
        "headers, refused (413) before decoding (default 16777216: 64 images of 512 x 512)",
    )
    parser.add_argument(
        "--max-batch-pixels",
        type=int,
        default=1 << 22,
        help="most pixels merged into one reward call; larger requests are scored in pieces, so a small request "
        "waits at most one such call (default 4194304: 16 images of 512 x 512)",
    )
    parser.add_argument("--max-batch", type=int, default=256, help="most images merged into one reward call")
    parser.add_argument(
        "--max-wait-ms", type=float, default=10.0, help="how long a batch waits for more requests after its first"
    )
    parser.add_argument(
        "--max-connections", type=int, default=64, help="open connections served at once; beyond it: 503 (default 64)"
    )
    parser.add_argument(
        "--read-timeout", type=float, default=60.0, help="seconds a client may take to send its body (default 60)"
    )
    parser.add_argument(
        "--request-timeout", type=float, default=600.0, help="seconds a request may wait for its scores (default 600)"
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"require 'Authorization: Bearer TOKEN' on every request (default: ${TOKEN_ENV} if set; the "
        "environment variable keeps it out of the process list); required for a non-loopback --host",
    )
    parser.add_argument(
        "--allowed-hosts",
        default="",
        help="comma-separated extra Host header names to accept (e.g. the machine's DNS name); the bound address "
        "(and for a loopback bind 127.0.0.1, localhost, [::1]) is always accepted",
    )
    parser.add_argument(
        "--allow-origin",
        default="",
        help="comma-separated browser origins (e.g. http://localhost:3000) allowed to call the server; "
        "by default a request carrying any Origin header is refused (403)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.set_defaults(func=run)


def _parse_json_argument(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{what} must be JSON, got {text!r} ({error})") from None


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _check_arguments(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be from 0 to 65535 (0 picks a free port), got {args.port}")
    positive = {
        "--max-request-mb": args.max_request_mb,
        "--max-request-pixels": args.max_request_pixels,
        "--max-batch-pixels": args.max_batch_pixels,
        "--max-batch": args.max_batch,
        "--max-connections": args.max_connections,
        "--read-timeout": args.read_timeout,
        "--request-timeout": args.request_timeout,
    }
    for flag, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{flag} must be > 0, got {value}")
    if args.max_wait_ms < 0:
        raise ConfigError(f"--max-wait-ms must be >= 0, got {args.max_wait_ms}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    import torch

    from vgpo.rewards import build_reward
    from vgpo.rewards.server import RewardServer, reward_label

    spec: Any = args.reward.strip()
    if spec.startswith("{"):
        spec = _parse_json_argument(spec, "the reward spec")
    options = _parse_json_argument(args.options, "--options") if args.options else None
    if options is not None and not isinstance(options, dict):
        raise ConfigError(f"--options must be a JSON object {{reward name: {{option: value}}}}, got {options!r}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    reward = build_reward(spec, options=options)
    try:
        server = RewardServer(
            reward,
            reward_label(spec),
            args.host,
            args.port,
            max_request_bytes=int(args.max_request_mb * 1024 * 1024),
            max_request_pixels=args.max_request_pixels,
            max_batch_pixels=args.max_batch_pixels,
            max_batch=args.max_batch,
            max_wait=args.max_wait_ms / 1000.0,
            request_timeout=args.request_timeout,
            read_timeout=args.read_timeout,
            max_connections=args.max_connections,
            token=token,
            allowed_hosts=_names(args.allowed_hosts),
            allowed_origins=_names(args.allow_origin),
        )
    except OSError as error:
        raise ConfigError(f"cannot bind {args.host}:{args.port} ({error}); pick another --port or --host") from None
    guard = "bearer token required" if token else "no token: loopback only"
    try:
        # SIGTERM ends the server like Ctrl-C does, so a supervisor can stop it cleanly (from this line on)
        signal.signal(signal.SIGTERM, _interrupt)
        print(f"serving reward {reward_label(spec)!r} on {server.url} (POST /score, GET /health; {guard})", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
