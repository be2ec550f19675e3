"""`vgpo pretrain`'s typed config: section.key=value overrides like `vgpo train`, the older flags mapped onto the
same keys, and errors that name the key (no training here: see test_cli_sample_pretrain for runs)."""

import pytest

from vgpo.cli import build_parser
from vgpo.commands.pretrain import legacy_overrides
from vgpo.errors import ConfigError
from vgpo.models.tiny import TinyConfig
from vgpo.models.tiny_pretraining import PretrainCommandConfig, PretrainConfig, load_pretrain_config


def config_of(*argv: str) -> PretrainCommandConfig:
    args = build_parser().parse_args(["pretrain", "--out", "x", *argv])
    return load_pretrain_config(args.config, [*legacy_overrides(args), *args.overrides])


def test_defaults_are_the_dataclasses_defaults():
    config = config_of()
    assert config.train == PretrainConfig() and config.model == TinyConfig()
    assert (config.run.device, config.run.threads, config.run.tasks, config.run.init) == (
        "cpu",
        None,
        ["compositional", "text"],
        None,
    )


def test_older_flags_and_overrides_give_the_same_config():
    flags = config_of(
        "--steps", "7", "--lr", "5e-4", "--loss-weighting", "velocity", "--latent-channels", "4",
        "--embed-kernel", "8", "--threads", "1", "--tasks", "compositional", "compositional", "text",
    )  # fmt: skip
    overrides = config_of(
        "train.steps=7", "train.lr=5e-4", "train.loss_weighting=velocity", "model.latent_channels=4",
        "model.embed_kernel=8", "run.threads=1", "run.tasks=[compositional, compositional, text]",
    )  # fmt: skip
    assert flags == overrides
    assert (flags.train.steps, flags.train.lr, flags.model.latent_channels) == (7, 5e-4, 4)
    assert flags.run.tasks == ["compositional", "compositional", "text"]


def test_a_yaml_file_then_overrides(tmp_path):
    file = tmp_path / "pretrain.yaml"
    file.write_text("train:\n  steps: 9\n  seed: 3\nmodel:\n  num_layers: 2\n")
    config = config_of("--config", str(file), "train.steps=11")
    assert (config.train.steps, config.train.seed, config.model.num_layers) == (11, 3, 2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train.steps=0"], "train.steps must be >= 1, got 0"),
        (["train.stepz=3"], "unknown config key(s) train.stepz"),
        (["train.loss_weighting=l1"], "loss_weighting (--loss-weighting) must be one of"),
        (["--init", "shipped", "model.num_layers=2"], "run.init takes its architecture"),
        (["run.tasks=[]"], "run.tasks must name at least one task"),
        (["train.lr=fast"], "train.lr must be a number"),
    ],
)
def test_bad_settings_name_the_key(argv, message):
    with pytest.raises(ConfigError) as error:
        config_of(*argv)
    assert message in str(error.value)
