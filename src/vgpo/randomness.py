"""Resumable randomness: every random draw of a run comes from a generator seeded by (seed, iteration, stream),
so a run killed after iteration k and resumed from its checkpoint draws exactly what the uninterrupted run would
have drawn, and N processes draw what one process draws.

Streams in use: 0 prompt order, 1 a prompt slot's noise (via :func:`slot_generator`), 3 the update's sample and step
order, 4 the sampler's step plan (a window's position).
"""

from __future__ import annotations

import torch


def iteration_generator(seed: int, iteration: int, stream: int) -> torch.Generator:
    """A CPU generator that depends on (seed, iteration, stream) only: resumable randomness."""
    return torch.Generator().manual_seed((seed * 1_000_003 + iteration) * 16 + stream)


def slot_generator(seed: int, iteration: int, slot: int) -> torch.Generator:
    """The generator of one prompt slot's noise (its group's x_T and SDE eps): it depends on (seed, iteration,
    slot) only, not on which process holds the slot, so N processes draw what one process draws."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + iteration) * 16 + 1) * 1_000_003 + slot)
