"""Config loading: presets, overrides, validation messages."""

from pathlib import Path

import pytest

from vgpo.config import TrainConfig, config_from_dict, load_config, parse_overrides
from vgpo.errors import ConfigError

PRESETS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


def test_there_are_presets():
    assert any("embedded" in str(p) for p in PRESETS) and any("sd3" in str(p) for p in PRESETS)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_preset_loads_and_validates(preset: Path):
    if preset.parent.name in ("pretrain", "accelerate"):
        pytest.skip("pretraining presets and accelerate launch configs have their own schema")
    assert isinstance(load_config(preset), TrainConfig)


def test_overrides_parse_yaml_scalars_and_nest():
    assert parse_overrides(["algorithm.gamma=0.8", "optim.ema_decay=null", "task.reward={ocr: 2}"]) == {
        "algorithm": {"gamma": 0.8},
        "optim": {"ema_decay": None},
        "task": {"reward": {"ocr": 2}},
    }
    config = load_config(None, ["algorithm.gamma=0.8", "task.reward={ocr: 2}"])
    assert config.algorithm.gamma == 0.8 and config.task.reward == {"ocr": 2.0}


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path: Path):
    # YAML 1.1 (PyYAML) reads "3e-4" as a string; on the command line and in a file it means the number.
    config = load_config(None, ["optim.learning_rate=3e-4", "algorithm.kl_beta=4E-2", "task.reward={ocr: 1e0}"])
    assert config.optim.learning_rate == 3e-4 and config.algorithm.kl_beta == 0.04
    assert config.task.reward == {"ocr": 1.0}
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rate: 1e-4\n")
    assert load_config(path, []).optim.learning_rate == 1e-4
    for bad in ("1e-4x", "e-4", "nan", "inf", ""):
        with pytest.raises(ConfigError, match=r"optim\.learning_rate must be a number"):
            load_config(None, [f"optim.learning_rate={bad}"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algorithm.gama=0.9"], "unknown config key(s) algorithm.gama; known keys in algorithm: method, gamma"),
        (["bogus.key=1"], "unknown config key(s) bogus"),
        (["sampling.group_size=1"], "sampling.group_size must be >= 2"),
        (["sampling.group_size=two"], "sampling.group_size must be an integer, got 'two'"),
        (["algorithm.gamma=1"], "algorithm.gamma must be in [0, 1), got 1.0"),
        (["algorithm.variant=ppo"], "algorithm.method must be one of flow_grpo, vgpo, tcrm_only, adae_only"),
        (["algorithm.train_step_fraction=0.05"], "trains no step of 10"),
        (["optim.ema_decay=1.0"], "optim.ema_decay must be in [0, 1)"),
        (["sampling"], "must look like section.key=value"),
    ],
)
def test_bad_values_name_the_field_and_the_rule(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value)


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithm: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections"):
        load_config(bad)


def test_sd3_loader_options_and_reward_options_come_from_the_config():
    config = load_config(
        None,
        [
            "model.kind=sd3",
            "model.path=/data/sd3.5-medium",
            "model.lora_rank=4",
            "model.lora_targets=[to_q, to_v]",
            "model.negative_prompt=blurry",
            "model.max_sequence_length=77",
            "model.decode_batch_size=2",
            "task.reward_options.ocr.drop_score=0.3",
        ],
    )
    assert config.model.lora_targets == ["to_q", "to_v"]
    assert (config.model.negative_prompt, config.model.max_sequence_length, config.model.decode_batch_size) == (
        "blurry",
        77,
        2,
    )
    assert config.task.reward_options == {"ocr": {"drop_score": 0.3}}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.lora_targets=to_q", r"model\.lora_targets must be a list"),
        ("model.lora_targets=[1]", r"model\.lora_targets\[0\] must be a string"),
        ("model.lora_targets=[]", "model.lora_targets must name at least one module"),
        ("model.decode_batch_size=0", "model.decode_batch_size must be >= 1"),
        ("task.reward_options.ocr=3", r"task\.reward_options\.ocr must be a mapping"),
    ],
)
def test_bad_loader_and_reward_options_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.kind=sd3", "model.path=x", "model.lora_rank=4", override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.negative_prompt=x", r"model\.negative_prompt is not an option of model\.kind=tiny"),
        ("model.max_sequence_length=77", r"model\.max_sequence_length is not an option of model\.kind=tiny"),
        ("model.options.resolution=64", r"unknown config key\(s\) model\.options\.resolution"),
    ],
)
def test_sd3_only_options_are_refused_for_the_tiny_model(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_the_old_defaults_of_sd3_keys_still_load_for_the_tiny_model():
    """Configs saved before model.options held SD3's defaults at the top of model, whatever the kind."""
    config = load_config(None, ["model.resolution=512", "model.negative_prompt=''", "model.max_sequence_length=256"])
    assert config.model.kind == "tiny"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.kind=sd4"], r"unknown model\.kind 'sd4'; known models: .*sd3.*tiny"),
        (["model.options.resolutoin=64"], r"unknown config key\(s\) model\.options\.resolutoin"),
        (["model.options.resolution=big"], r"model\.options\.resolution must be an integer"),
        (["model.resolution=64", "model.options.resolution=128"], r"model\.resolution=64 and .* disagree"),
        (["model.lora_init=pissa"], r"model\.lora_init must be one of \['gaussian', 'kaiming'\]"),
        (["model.lora_rank=null", "model.lora_init=gaussian"], r"model\.lora_init needs model\.lora_rank"),
    ],
)
def test_model_kind_and_options_are_checked_where_the_config_loads(overrides, message):
    base = ["model.kind=sd3", "model.path=x", "model.lora_rank=4"]
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*base, *overrides])


def test_legacy_sd3_keys_and_model_options_give_the_same_options():
    from vgpo.models import model_options
    from vgpo.models.sd3 import SD3Options

    legacy = load_config(
        None, ["model.kind=sd3", "model.path=x", "model.resolution=64", "model.negative_prompt=blurry"]
    )
    options = load_config(
        None, ["model.kind=sd3", "model.path=x", "model.options={resolution: 64, negative_prompt: blurry}"]
    )
    expected = SD3Options(resolution=64, negative_prompt="blurry", max_sequence_length=256)
    assert model_options(legacy.model) == model_options(options.model) == expected


def test_lora_targets_need_a_lora_rank():
    with pytest.raises(ConfigError, match=r"model\.lora_targets needs model\.lora_rank"):
        load_config(None, ["model.kind=sd3", "model.path=x", "model.lora_targets=[to_q]"])


def test_reward_options_saved_in_a_config_can_be_cleared(tmp_path: Path):
    saved = tmp_path / "config.yaml"
    saved.write_text("task:\n  reward_options:\n    compositional: {strict: true}\n")
    assert load_config(saved).task.reward_options == {"compositional": {"strict": True}}
    assert load_config(saved, ["task.reward_options=null"]).task.reward_options is None


def test_a_preset_states_only_what_it_changes_over_its_base(tmp_path):
    from vgpo.config import load_config

    (tmp_path / "one.yaml").write_text("sampling:\n  group_size: 24\n  prompts_per_iteration: 2\n")
    (tmp_path / "eight.yaml").write_text("base: one.yaml\nsampling:\n  prompts_per_iteration: 48\n")
    config = load_config(tmp_path / "eight.yaml", ["sampling.num_steps=4"])
    assert (config.sampling.group_size, config.sampling.prompts_per_iteration, config.sampling.num_steps) == (24, 48, 4)


def test_a_missing_or_circular_base_is_reported(tmp_path):
    import pytest

    from vgpo.config import load_config
    from vgpo.errors import ConfigError

    (tmp_path / "a.yaml").write_text("base: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"gone.yaml' \(the base of .*a.yaml'\) not found"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match="is its own base"):
        load_config(tmp_path / "b.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.learning_rate=.inf", "optim.learning_rate must be a finite number, got inf"),
        ("algorithm.gamma=-.inf", "algorithm.gamma must be a finite number, got -inf"),
        ("optim.adam_betas=[0.9, .nan]", "optim.adam_betas[1] must be a finite number, got nan"),
        ("optim.weight_decay=-1", "optim.weight_decay must be >= 0 (0: off), got -1.0"),
        ("optim.adam_betas=[2, 3]", "optim.adam_betas must be two numbers in [0, 1) (e.g. [0.9, 0.999]), got [2.0"),
        ("sampling.eval_max_prompts=0", "sampling.eval_max_prompts must be >= 1 or null (all test prompts), got 0"),
        ("run.seed=-1", "run.seed must be in [0, 1048576), got -1"),
        ("run.seed=1048576", "run.seed must be in [0, 1048576), got 1048576"),  # 2**21 overflows torch's seed
        ("model.lora_alpha=-5", "model.lora_alpha must be > 0 or null (alpha = rank), got -5.0"),
    ],
)
def test_values_that_were_accepted_are_refused_with_their_rule(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict(parse_overrides([override]))
    assert message in str(error.value)


def test_the_largest_seed_allowed_seeds_every_generator() -> None:
    from vgpo.config import MAX_SEED
    from vgpo.trainer import iteration_generator, slot_generator

    config_from_dict(parse_overrides([f"run.seed={MAX_SEED - 1}"]))
    slot_generator(MAX_SEED - 1, 100_000, 100_000)  # raises "Overflow" when the seed does not fit
    iteration_generator(MAX_SEED - 1, 100_000, 3)
