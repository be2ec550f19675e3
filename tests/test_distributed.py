"""Training on N processes: `accelerate launch --multi_gpu --num_processes 2 -m vgpo train` on CPU (torchrun under
accelerate starts two processes; with no CUDA device they talk over gloo) against one process with the same
global batch, resume under the launcher, and the errors of a batch that does not split.

Why not `accelerate launch --cpu --num_processes 2`: accelerate 1.15 then starts ONE process (its multi-CPU path
needs mpirun), which the CLI test would not notice; `--multi_gpu` on a machine without GPUs is the two-process
gloo launch (checked by the world_size the checkpoint records).

The CLI test launches five processes (about a minute on 2 shared cores), so it is marked slow; the default run
keeps a fast variant: two gloo ranks spawned in-process on the fake policy against one process, same checks.

The two-process run draws the same prompts and noise as the one-process run (noise belongs to a prompt slot, not
to a process) and sums gradients scaled by the global batch, so its first update is the one-process update up to
the order of floating-point sums. Tolerance: rtol 1e-5, atol 1e-6, where one AdamW step of the preset moves a weight
by up to its learning rate, 1e-3 (pinned in `quick`). Largest differences seen (`pytest -s -m slow tests/test_distributed.py` prints
them; the tiny model is drawn anew each time): up to 7.8e-8 on the LoRA weights, 1.5e-8 on the EMA and 7.3e-11 on
AdamW's moments over two runs.

Sharded full fine-tuning (FSDP2, `vgpo.parallel.sharding`): the default run trains the fake policy on two sharded gloo ranks
against one process and resumes each run's checkpoint on the other layout; the slow ones launch the tiny model with
`accelerate launch --use_fsdp` (and resume through configs/accelerate/1node_8gpu_fsdp.yaml), and compare sharded with
replicated on the tiny random SD3 pipeline under gradient checkpointing. Same tolerance; the figures are in
docs/distributed.md.
"""

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fakes import BrightnessReward, FakePolicy, FakeTask
from fixtures_sd3 import TINY_RESOLUTION, TOKEN_LENGTH, build_tiny_sd3_pipeline
from vgpo.config import TrainConfig, config_from_dict
from vgpo.errors import ConfigError
from vgpo.models.sd3 import load_sd3_policy
from vgpo.models.tiny import TinyConfig, TinyFlowModel, save_model
from vgpo.parallel.distributed import ProcessGroup
from vgpo.parallel.sharding import ignored_launcher_settings, is_sharded
from vgpo.tasks import get_task
from vgpo.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESET = CONFIGS / "embedded" / "compositional_vgpo.yaml"


def quick(model: Path, iterations: int) -> list[str]:
    """A global batch of 4 prompts x 2 samples, micro-batches of 2 (so the two runs chunk differently)."""
    return [
        f"model.path={model}",
        "model.lora_rank=2",
        "sampling.num_steps=2",
        "sampling.group_size=2",
        "sampling.prompts_per_iteration=4",
        "sampling.eval_num_steps=2",
        "sampling.eval_samples_per_prompt=2",
        "sampling.eval_max_prompts=2",
        "optim.micro_batch_size=2",
        "optim.learning_rate=1e-3",  # pinned: the tolerance below is stated against a step of this size
        f"run.iterations={iterations}",
        "run.eval_at_start=false",
        "run.eval_every=0",
        "run.checkpoint_every=1",
        "run.keep_checkpoints=4",
        "run.progress=false",
        "run.tensorboard=false",
        "run.num_threads=1",
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def launch(*args: str, cwd: Path, engine: tuple[str, ...] = ("--multi_gpu",)) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 -m vgpo ARGS` with CUDA hidden (gloo), on a free port;
    ``engine`` replaces ``--multi_gpu`` (e.g. ``--use_fsdp``)."""
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    options = [
        *engine,
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    return run([*accelerate, *options, "--main_process_port", str(free_port()), "-m", "vgpo", *args], cwd)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    save_model(TinyFlowModel(TinyConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8)), folder)
    return folder


def train_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_update_like_one_and_resume(tmp_path: Path, tiny_model: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    result = run(
        [sys.executable, "-m", "vgpo", "train", str(PRESET), *quick(tiny_model, 1), "--out", str(one)], tmp_path
    )
    assert result.returncode == 0, result.stderr
    result = launch("train", str(PRESET), *quick(tiny_model, 1), "--out", str(two), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("run directory:") == 1  # only the main process reports
    assert "2 processes, the trained weights whole on each, gradients summed" in result.stdout

    first = Path("checkpoints") / "iter_000001"
    for name in ("trainable.safetensors", "ema.safetensors", "optimizer.safetensors"):
        expected, actual = load_file(one / first / name), load_file(two / first / name)
        assert expected.keys() == actual.keys()
        print(name, "largest difference", max(float((actual[k] - expected[k]).abs().max()) for k in expected))
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=f"{name}:{key}")
    # the metrics describe the global batch: the same line as the one-process run (timings aside)
    [line_one], [line_two] = ([r for r in train_lines(d) if r["kind"] == "train"] for d in (one, two))
    assert json.loads((two / first / "checkpoint.json").read_text())["world_size"] == 2
    for key in ("reward_mean", "reward_std", "zero_spread_fraction", "instant_reward_by_step", "loss", "ratio"):
        assert line_two[key] == pytest.approx(line_one[key], rel=1e-5, abs=1e-6), key

    result = launch("train", "--resume", str(two), "run.iterations=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = train_lines(two)
    assert [(r["kind"], r["iteration"]) for r in records] == [("train", 1), ("eval", 1), ("train", 2), ("eval", 2)]
    assert (two / "checkpoints" / "iter_000002" / "trainable.safetensors").is_file()


def full_fine_tuning(model: Path, iterations: int) -> list[str]:
    """:func:`quick` as full fine-tuning (every transformer weight trained), with the KL term, so that the frozen
    reference copy runs (sharded too under FSDP)."""
    lora = [arg for arg in quick(model, iterations) if not arg.startswith("model.lora_rank")]
    return [*lora, "model.lora_rank=null", "algorithm.kl_beta=0.01"]


@pytest.fixture(scope="module")
def tiny_two_blocks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny2")
    torch.manual_seed(0)  # a fixed model: AdamW's first step magnifies rounding on weights with near-zero gradients
    save_model(TinyFlowModel(TinyConfig(num_layers=2, num_attention_heads=2, attention_head_dim=8)), folder)
    return folder


@pytest.mark.slow
def test_fsdp_launch_of_full_fine_tuning_updates_like_one_process_and_resumes(
    tmp_path: Path, tiny_two_blocks: Path
) -> None:
    """`accelerate launch --use_fsdp --num_processes 2` of a full fine-tune of the tiny model (two blocks, each a
    shard unit, with the transformer and its reference copy) against one process, same global batch: the first
    update's weights, EMA and AdamW state agree to rtol 1e-5, atol 1e-6; then it resumes under the launcher."""
    one, two = tmp_path / "one", tmp_path / "two"
    fsdp = ("--use_fsdp", "--fsdp_version", "2")
    result = run(
        [sys.executable, "-m", "vgpo", "train", str(PRESET), *full_fine_tuning(tiny_two_blocks, 1), "--out", str(one)],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    result = launch(
        "train", str(PRESET), *full_fine_tuning(tiny_two_blocks, 1), "--out", str(two), cwd=tmp_path, engine=fsdp
    )
    assert result.returncode == 0, result.stderr
    assert "2 processes, the trained weights sharded over them (FSDP)" in result.stdout
    first = Path("checkpoints") / "iter_000001"
    assert json.loads((two / first / "checkpoint.json").read_text())["world_size"] == 2
    assert "transformer.transformer_blocks.1.attn.to_q.weight" in load_file(two / first / "trainable.safetensors")
    print("FSDP first update, largest difference", assert_same_checkpoint(two / first, one / first))
    [line_one], [line_two] = ([r for r in train_lines(d) if r["kind"] == "train"] for d in (one, two))
    for key in ("reward_mean", "loss", "kl", "ratio", "grad_norm"):
        assert line_two[key] == pytest.approx(line_one[key], rel=1e-5, abs=1e-6), key

    # the resume through the shipped config file (distributed_type FSDP), 2 processes instead of its 8
    config_file = ("--config_file", str(CONFIGS / "accelerate" / "1node_8gpu_fsdp.yaml"))
    result = launch("train", "--resume", str(two), "run.iterations=2", cwd=tmp_path, engine=config_file)
    assert "2 processes, the trained weights sharded over them (FSDP)" in result.stdout, result.stderr
    assert result.returncode == 0, result.stderr
    records = train_lines(two)
    assert [(r["kind"], r["iteration"]) for r in records] == [("train", 1), ("eval", 1), ("train", 2), ("eval", 2)]
    assert (two / "checkpoints" / "iter_000002" / "trainable.safetensors").is_file()


def fake_config(iterations: int = 1, method: str = "vgpo"):
    """The fake run; a window method (flow_grpo_fast) samples 8 steps, its window of 2 in [0, 4)."""
    return config_from_dict(
        {
            "sampling": {"num_steps": 3 if method == "vgpo" else 8, "group_size": 2, "prompts_per_iteration": 4},
            "algorithm": {"method": method, "clip_range": 0.2, "kl_beta": 0.1},
            "optim": {"micro_batch_size": 3, "learning_rate": 1e-2},
            "run": {
                "iterations": iterations,
                "eval_at_start": False,
                "eval_every": 0,
                "progress": False,
                "tensorboard": False,
            },
        }
    )


def _fake_rank(rank: int, port: int, run_dir: str, method: str = "vgpo") -> None:
    """One of two gloo ranks training the fake policy (spawned by the test below)."""
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank)}
    )
    os.environ.update({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    trainer = Trainer(
        fake_config(method=method),
        run_dir,
        policy=FakePolicy(),
        task=FakeTask(),
        reward=BrightnessReward(),
        group=ProcessGroup(cpu=True),
    )
    assert trainer.group.world_size == 2 and trainer.group.rank == rank
    trainer.run()
    # Leave gloo cleanly, as `vgpo train` does: a rank that exits with the group alive can abort in gloo's
    # threads (SIGABRT, "terminate called without an active exception"), seen once on a fresh clone.
    trainer.group.close()
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("method", ["vgpo", "flow_grpo_fast"])
def test_two_gloo_ranks_update_like_one_process(tmp_path: Path, method: str) -> None:
    """The fast variant of the CLI test: the same global batch on one process and on two gives the same weights,
    EMA and metrics line (rtol 1e-5, atol 1e-6), and only rank 0 writes. With a window method both processes must
    take the window the one process takes (drawn from the seed and the iteration)."""
    import torch.multiprocessing

    config = fake_config(method=method)
    one = Trainer(config, tmp_path / "one", policy=FakePolicy(), task=FakeTask(), reward=BrightnessReward())
    one.run()
    torch.multiprocessing.spawn(_fake_rank, args=(free_port(), str(tmp_path / "two"), method), nprocs=2, join=True)
    first = Path("checkpoints") / "iter_000001"
    for name in ("trainable.safetensors", "ema.safetensors", "optimizer.safetensors"):
        expected, actual = load_file(tmp_path / "one" / first / name), load_file(tmp_path / "two" / first / name)
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=f"{name}:{key}")
    [line_one], [line_two] = ([r for r in train_lines(tmp_path / d) if r["kind"] == "train"] for d in ("one", "two"))
    for key in ("reward_mean", "zero_spread_fraction", "advantage_abs_mean", "loss", "kl", "ratio", "grad_norm"):
        assert line_two[key] == pytest.approx(line_one[key], rel=1e-5, abs=1e-6), key
    assert line_two["sde_steps"] == line_one["sde_steps"] == ([0, 1, 2] if method == "vgpo" else [2, 3])


def fsdp_config(iterations: int):
    """The fake run as full fine-tuning, micro-batches of one (so that the processes hold different numbers of
    chunks of a share and the sharded update must even them out), evaluated after every iteration (with the EMA
    swapped into the shards), checkpointed after every one."""
    config = fake_config(iterations)
    config.optim.micro_batch_size = 1
    config.run.eval_every = 1
    config.run.checkpoint_every = 1
    return config


def _sharded_rank(rank: int, port: int, runs: list[tuple[str, int, bool]]) -> None:
    """One of two gloo ranks training the fake policy sharded with FSDP2 (spawned by the test below), for each
    (run directory, iterations, resume) of ``runs`` in turn."""
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank)}
    )
    os.environ.update({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    for run_dir, iterations, resume in runs:
        trainer = Trainer(
            fsdp_config(iterations),
            run_dir,
            policy=FakePolicy(),
            task=FakeTask(),
            reward=BrightnessReward(),
            group=ProcessGroup(cpu=True, shard=True),
        )
        assert trainer.sharded and all(is_sharded(p) for p in trainer.parameters)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # resuming on another number of processes is warned about
            trainer.run(resume=resume)
    trainer.group.close()  # leave gloo cleanly (see _fake_rank)


def assert_same_checkpoint(actual: Path, expected: Path) -> dict[str, float]:
    """The two checkpoints' weights, EMA and AdamW state agree to rtol 1e-5, atol 1e-6; their largest differences."""
    largest = {}
    for name in ("trainable.safetensors", "ema.safetensors", "optimizer.safetensors"):
        want, got = load_file(expected / name), load_file(actual / name)
        assert want.keys() == got.keys(), name
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=f"{name}:{key}")
        largest[name] = max(float((got[k].double() - want[k].double()).abs().max()) for k in want)
    return largest


def test_sharded_full_fine_tuning_updates_like_one_process_and_resumes_on_either(tmp_path: Path) -> None:
    """Two gloo ranks sharding the fake policy with FSDP2 (weights, gradients, AdamW, EMA and the reference copy
    in halves) against one process holding it whole, same global batch: the checkpoints after the first iteration
    agree (rtol 1e-5, atol 1e-6; gradients summed, not averaged, over the ranks: averaged, AdamW's moments and the
    clipped grad_norm are off by 2x). The sharded checkpoint resumes on one process, and the one-process
    checkpoint on two sharded ranks, each ending where the one-process run ends."""
    import shutil

    import torch.multiprocessing

    first, second = Path("checkpoints") / "iter_000001", Path("checkpoints") / "iter_000002"
    one = Trainer(fsdp_config(2), tmp_path / "one", policy=FakePolicy(), task=FakeTask(), reward=BrightnessReward())
    one.run()
    shutil.copytree(tmp_path / "one", tmp_path / "three")  # the one-process run stopped after its first iteration
    shutil.rmtree(tmp_path / "three" / second)
    runs = [(str(tmp_path / "two"), 1, False), (str(tmp_path / "three"), 2, True)]
    torch.multiprocessing.spawn(_sharded_rank, args=(free_port(), runs), nprocs=2, join=True)
    print(
        "first update, largest difference", assert_same_checkpoint(tmp_path / "two" / first, tmp_path / "one" / first)
    )
    lines_one, lines_two = train_lines(tmp_path / "one"), train_lines(tmp_path / "two")
    assert [r["kind"] for r in lines_two] == ["train", "eval"]
    for key in ("reward_mean", "advantage_abs_mean", "loss", "kl", "ratio", "grad_norm", "first_ratio_error"):
        assert lines_two[0][key] == pytest.approx(lines_one[0][key], rel=1e-5, abs=1e-6), key
    assert lines_two[1]["reward"] == pytest.approx(lines_one[1]["reward"], rel=1e-5, abs=1e-6)  # the EMA's eval

    # the sharded run's checkpoint resumed on one process (the one-process one was resumed sharded above)
    with pytest.warns(UserWarning, match="checkpointed by 2 process"):
        Trainer(fsdp_config(2), tmp_path / "two", policy=FakePolicy(), task=FakeTask(), reward=BrightnessReward()).run(
            resume=True
        )
    for resumed in ("two", "three"):
        difference = assert_same_checkpoint(tmp_path / resumed / second, tmp_path / "one" / second)
        print(f"second update resumed ({resumed}), largest difference", difference)


def sd3_config() -> TrainConfig:
    """Full fine-tuning of the tiny random SD3 pipeline with the KL term, micro-batches of one, one iteration."""
    return config_from_dict(
        {
            "model": {"kind": "sd3", "lora_rank": None, "resolution": TINY_RESOLUTION, "dtype": "fp32"},
            "sampling": {
                "num_steps": 2,
                "group_size": 2,
                "prompts_per_iteration": 2,
                "eval_num_steps": 2,
                "eval_samples_per_prompt": 1,
                "eval_max_prompts": 1,
            },
            "algorithm": {"kl_beta": 0.01},
            "optim": {"micro_batch_size": 1, "learning_rate": 1e-3},
            "run": {"iterations": 1, "eval_at_start": False, "progress": False, "tensorboard": False},
        }
    )


def sd3_trainer(folder: str, run_dir: str, group: ProcessGroup | None = None) -> Trainer:
    torch.set_num_threads(1)
    policy = load_sd3_policy(
        folder, full_finetune=True, dtype="fp32", device="cpu", resolution=TINY_RESOLUTION,
        max_sequence_length=TOKEN_LENGTH, gradient_checkpointing=True,
    )  # fmt: skip
    return Trainer(sd3_config(), run_dir, policy=policy, task=get_task("compositional"), reward=redness, group=group)


def redness(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
    """A toy reward with spread inside every group, [N]."""
    return (images[:, 0] - images[:, 2]).mean(dim=(1, 2))


def _sd3_rank(rank: int, port: int, folder: str, replicated: str, sharded: str) -> None:
    """One of two gloo ranks training the tiny SD3 pipeline replicated, then sharded (spawned by the test below)."""
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank)}
    )
    os.environ.update({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    for run_dir, shard in ((replicated, False), (sharded, True)):
        trainer = sd3_trainer(folder, run_dir, ProcessGroup(cpu=True, shard=shard))
        assert trainer.sharded == shard
        trainer.run()
    trainer.group.close()  # leave gloo cleanly (see _fake_rank)


@pytest.mark.slow
def test_sharded_sd3_full_fine_tuning_with_gradient_checkpointing_updates_like_replicated(tmp_path: Path) -> None:
    """SD3's shard units, and FSDP2 under diffusers' gradient checkpointing: the tiny random SD3 pipeline fully
    fine-tuned on two gloo ranks, sharded against replicated (gradients summed by ProcessGroup.sum_gradients), same
    global batch: the first update agrees to rtol 1e-5, atol 1e-6 (seen: 1.5e-8 on the weights, 4.7e-10 on AdamW's
    moments).

    Why not against one process: on this random pipeline the 2-process rollouts (2 samples per forward instead of 4)
    differ from the 1-process ones by float rounding, and the groups' reward spread is so small (std 6e-4) that
    GRPO's normalisation turns that into relative differences of 1e-5 in the loss; AdamW's first step, which moves a
    weight with a near-zero gradient by up to the learning rate, then makes weights differ by up to 1.8e-6. That
    is the data-parallel path's rounding (replicated and sharded show the same), not sharding's."""
    import torch.multiprocessing

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "tiny-sd3"
    build_tiny_sd3_pipeline(folder)
    replicated, sharded = tmp_path / "replicated", tmp_path / "sharded"
    arguments = (free_port(), str(folder), str(replicated), str(sharded))
    torch.multiprocessing.spawn(_sd3_rank, args=arguments, nprocs=2, join=True)
    first = Path("checkpoints") / "iter_000001"
    print("SD3 sharded vs replicated, largest difference", assert_same_checkpoint(sharded / first, replicated / first))


class TwoProcesses(ProcessGroup):
    """Rank 0 of a pretend two-process group, for the checks made before any collective."""

    def __init__(self) -> None:
        pass

    rank = 0  # type: ignore[assignment]
    world_size = 2  # type: ignore[assignment]
    shard_requested = False


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused(tmp_path: Path) -> None:
    config = config_from_dict({"sampling": {"prompts_per_iteration": 3, "group_size": 2}})
    with pytest.raises(ConfigError, match=r"prompts_per_iteration=3 is the global .* must divide by the 2 processes"):
        Trainer(config, tmp_path, policy=FakePolicy(), task=FakeTask(), reward=BrightnessReward(), group=TwoProcesses())


def test_one_process_is_the_world_of_one() -> None:
    group = ProcessGroup()
    assert (group.rank, group.world_size, group.is_main) == (0, 1, True)
    values = torch.arange(6.0).reshape(3, 2)
    assert group.gather(values) is values and group.all_reduce_sum(values) is values
    assert group.gather_objects({"a": 1}) == [{"a": 1}] and group.broadcast_object([1, 2]) == [1, 2]
    group.barrier()
    group.close()


def test_a_deepspeed_launch_is_refused_naming_fsdp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match=r"DeepSpeed, which vgpo does not implement.*1node_8gpu_fsdp\.yaml"):
        ProcessGroup()


def test_an_fsdp_launch_asks_for_sharding_which_one_process_does_not_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    group = ProcessGroup()
    assert group.shard_requested and not ProcessGroup(shard=False).shard_requested
    trainer = Trainer(
        fake_config(), tmp_path, policy=FakePolicy(), task=FakeTask(), reward=BrightnessReward(), group=group
    )
    assert not trainer.sharded  # one process: the same plain path


def test_fsdp_settings_of_the_launch_that_vgpo_does_not_follow_are_named() -> None:
    environ = {"FSDP_VERSION": "1", "FSDP_OFFLOAD_PARAMS": "true", "FSDP_ACTIVATION_CHECKPOINTING": "false"}
    ignored = ignored_launcher_settings(environ)
    assert len(ignored) == 2 and ignored[0].startswith("fsdp_version 1") and ignored[1].startswith("fsdp_offload")
    assert ignored_launcher_settings({"FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true"}) == []


def test_an_fsdp_launch_of_a_lora_run_runs_replicated_and_says_so(tmp_path: Path) -> None:
    group = TwoProcesses()
    group.shard_requested = True
    config = fake_config()
    config.model.lora_rank = 4
    with pytest.warns(UserWarning, match=r"FSDP, which vgpo uses for full fine-tuning only.*LoRA \(rank 4\)"):
        trainer = Trainer(
            config, tmp_path, policy=FakePolicy(), task=FakeTask(), reward=BrightnessReward(), group=group
        )
    assert not trainer.sharded


def test_shipped_accelerate_configs_are_multi_gpu_and_fsdp_launches() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    one_node = load_config_from_file(str(CONFIGS / "accelerate" / "1node_8gpu.yaml"))
    assert (one_node.distributed_type.value, one_node.num_machines, one_node.num_processes) == ("MULTI_GPU", 1, 8)
    two_nodes = load_config_from_file(str(CONFIGS / "accelerate" / "2node_16gpu.yaml"))
    assert (two_nodes.distributed_type.value, two_nodes.num_machines, two_nodes.num_processes) == ("MULTI_GPU", 2, 16)
    sharded = load_config_from_file(str(CONFIGS / "accelerate" / "1node_8gpu_fsdp.yaml"))
    assert (sharded.distributed_type.value, sharded.num_machines, sharded.num_processes) == ("FSDP", 1, 8)
    assert sharded.fsdp_config["fsdp_version"] == 2


@pytest.mark.parametrize("task", ["geneval", "ocr", "pickscore"])
def test_8gpu_presets_are_the_one_gpu_presets_at_the_baselines_global_batch(task: str) -> None:
    from vgpo.config import load_config

    eight = load_config(CONFIGS / "sd3" / f"{task}_kl_8gpu.yaml")
    one = load_config(CONFIGS / "sd3" / f"{task}_kl.yaml")
    assert (eight.sampling.prompts_per_iteration, eight.sampling.group_size) == (48, 24)
    assert eight.sampling.prompts_per_iteration % 8 == 0
    one.sampling.prompts_per_iteration = 48
    assert eight.to_dict() == one.to_dict()


def test_deterministic_switch_turns_torch_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        config = fake_config()
        config.run.deterministic = True
        Trainer(config, tmp_path, policy=FakePolicy(), task=FakeTask(), reward=BrightnessReward())
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.deterministic = False


def test_python_dash_m_vgpo_is_the_cli(tmp_path: Path) -> None:
    """`python -m vgpo` (what `accelerate launch -m vgpo` runs on every process) is the `vgpo` command."""
    result = run([sys.executable, "-m", "vgpo", "train", "missing.yaml"], tmp_path)
    assert result.returncode == 2 and "config file 'missing.yaml' not found" in result.stderr
