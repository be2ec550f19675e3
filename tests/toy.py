"""The analytic toy lives in the package (`vgpo.experiments.toy`, where the toy gym uses it); tests import it from
here by its short name."""

from vgpo.experiments.toy import (  # noqa: F401
    DATA_STD,
    REWARD_WIDTH,
    TOY_PROMPTS,
    TOY_SHAPE,
    TargetReward,
    ToyPolicy,
    ToyTask,
    exact_velocity,
    expected_reward,
    latents_of,
    toy_target,
)
