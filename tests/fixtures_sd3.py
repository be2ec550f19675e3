"""The random-weight SD3 pipelines of the tests (built in `tests/sd3_random.py`, shared with bench/sd3_gpu.py)."""

from sd3_random import (
    SD35_MEDIUM_TRANSFORMER,
    SD35_VAE,
    TINY_RESOLUTION,
    TOKEN_LENGTH,
    build_sd3_medium_shaped_pipeline,
    build_tiny_sd3_pipeline,
    byte_level_clip_tokenizer,
    unigram_t5_tokenizer,
)

_clip_tokenizer = byte_level_clip_tokenizer  # the name the reward tests import

__all__ = [
    "SD35_MEDIUM_TRANSFORMER",
    "SD35_VAE",
    "TINY_RESOLUTION",
    "TOKEN_LENGTH",
    "_clip_tokenizer",
    "build_sd3_medium_shaped_pipeline",
    "build_tiny_sd3_pipeline",
    "byte_level_clip_tokenizer",
    "unigram_t5_tokenizer",
]
