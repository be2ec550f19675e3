"""Errors meant for users: the message names the cause and the fix; the CLI prints it without a traceback."""


class VgpoError(Exception):
    """Base class of every error vgpo raises for bad input (config, files, rewards, checkpoints)."""


class ConfigError(VgpoError, ValueError):
    """A configuration value, key or preset is invalid."""


class RewardError(VgpoError, RuntimeError):
    """A reward function returned something unusable (NaN, wrong count) or its server failed."""


class CheckpointError(VgpoError, RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to another model."""
