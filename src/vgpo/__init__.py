"""vgpo: Value-Anchored Group Policy Optimization (VGPO) and Flow-GRPO for flow-matching text-to-image models."""

__version__ = "0.1.0"
