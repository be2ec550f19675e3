"""Moving the tiny model and SD3 onto the adapter base (`vgpo.models.base`) left their samples bitwise unchanged.

The digests below were recorded at commit 6624dcc (before the move, with the then TinyPolicy / SD3Policy) by the
same computations as :func:`digests`, on this project's CPU machine (torch 2.13.0+cpu, AVX512, one thread). Other
CPUs may round matrix products differently; there the comparison is skipped (the other model tests still run).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sd3_random import TINY_RESOLUTION, TOKEN_LENGTH, build_tiny_sd3_pipeline
from vgpo.models.sd3 import load_sd3_policy
from vgpo.models.tiny import load_tiny_policy
from vgpo.policy import FlowPolicy, select_rows
from vgpo.sampling import generate, rollout

RECORDED_AT_6624DCC = {
    "tiny_full_generate": "d66a818b15093d70",
    "tiny_full_generate_cfg": "aae0456f409ffc8a",
    "tiny_full_sde": "286a408f62253943/44873994348f9f67",
    "tiny_lora_init": "c2288b09efc7aa3f",
    "tiny_lora_generate": "d66a818b15093d70",
    "tiny_fingerprint": "tiny-f91387e76720-lora-r4-a8 | tiny-f91387e76720-full",
    "sd3_lora_init": "0eb68a767c145227",
    "sd3_generate_cfg": "3d795818cddbd4c2",
    "sd3_generate": "3dff803687701b03",
    "sd3_sde_cfg": "32bbf1200dba6496/ae1c5b8c47db7fee",
    "sd3_fingerprint": "sd3:sd3:c38b89066ac0:lora(r=4,alpha=8,targets=to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,"
    "add_v_proj,to_add_out)",
    "sd3_schedule": "d3188e09e1c9990e",
}
RECORDED_ON = ("2.13.0+cpu", "AVX512")
PROMPTS = ["a red circle above a blue square", 'a sign that says "hi"', "two green triangles"]


def digest(tensor: torch.Tensor) -> str:
    """First 16 hex digits of the sha256 of the float32 bytes."""
    return hashlib.sha256(tensor.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()[:16]


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, float32 bytes) in name order."""
    hasher = hashlib.sha256()
    for name in sorted(state):
        hasher.update(name.encode())
        hasher.update(state[name].float().contiguous().numpy().tobytes())
    return hasher.hexdigest()[:16]


def sde_digest(policy: FlowPolicy, guidance_scale: float) -> str:
    """A 4-step SDE rollout of two prompts x two samples: digests of its latents and log-probs."""
    cond = select_rows(policy.encode_prompts(PROMPTS[:2]), torch.tensor([0, 0, 1, 1]))
    result = rollout(policy, cond, 4, guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(3))
    return digest(result.latents) + "/" + digest(result.log_probs)


def digests(tiny: Callable[..., FlowPolicy], sd3: Callable[..., FlowPolicy], sd3_folder: Path) -> dict[str, str]:
    """What RECORDED_AT_6624DCC holds, computed through the given loaders (the same calls as at 6624dcc)."""
    out = {}
    full = tiny(device="cpu")
    out["tiny_full_generate"] = digest(generate(full, PROMPTS, num_steps=8, seed=0))
    out["tiny_full_generate_cfg"] = digest(generate(full, PROMPTS, num_steps=8, seed=1, guidance_scale=4.5))
    out["tiny_full_sde"] = sde_digest(full, 1.0)
    torch.manual_seed(0)
    lora = tiny(lora_rank=4, lora_alpha=8, device="cpu")
    out["tiny_lora_init"] = state_digest(lora.trainable_state_dict())
    out["tiny_lora_generate"] = digest(generate(lora, PROMPTS, num_steps=8, seed=0))
    out["tiny_fingerprint"] = lora.fingerprint() + " | " + full.fingerprint()
    torch.manual_seed(0)
    options = {"resolution": TINY_RESOLUTION, "max_sequence_length": TOKEN_LENGTH, "lora_rank": 4, "lora_alpha": 8}
    policy = sd3(sd3_folder, dtype="fp32", device="cpu", **options)
    out["sd3_lora_init"] = state_digest(policy.trainable_state_dict())
    out["sd3_generate_cfg"] = digest(generate(policy, PROMPTS, num_steps=4, seed=0, guidance_scale=4.5))
    out["sd3_generate"] = digest(generate(policy, PROMPTS, num_steps=4, seed=2))
    out["sd3_sde_cfg"] = sde_digest(policy, 4.5)
    out["sd3_fingerprint"] = policy.fingerprint()
    out["sd3_schedule"] = digest(policy.sigma_schedule(7))
    return out


def test_samples_lora_init_and_fingerprints_are_bitwise_those_before_the_adapter_base(tmp_path: Path) -> None:
    if (torch.__version__, torch.backends.cpu.get_cpu_capability()) != RECORDED_ON:
        pytest.skip(f"digests recorded with torch/CPU {RECORDED_ON}; this is another platform")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_tiny_sd3_pipeline(tmp_path / "sd3")
        found = digests(load_tiny_policy, load_sd3_policy, tmp_path / "sd3")
    finally:
        torch.set_num_threads(threads)
    assert found == RECORDED_AT_6624DCC, json.dumps(found, indent=1)
