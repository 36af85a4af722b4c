"""TrainConfig: the flags made from it, argv and flagfiles in and out, and its checks (no
TensorFlow: these run in milliseconds)."""

import dataclasses
import glob

import pytest

from conftest import REPO
from spvit_tf.errors import SpvitError
from spvit_tf.train_config import TrainConfig, define_flags, parse_model_options

TINY = ["--model=deit_tiny_patch16_224", "--workdir=w"]


def test_every_field_is_a_flag_with_its_default_and_help():
    from absl import flags

    values = flags.FlagValues()
    define_flags(values)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(values) == set(fields)
    for name, field in fields.items():
        default = values[name].default
        assert (tuple(default) if isinstance(default, list) else default) == field.default, name
        assert values[name].help.endswith(field.metadata["help"]), name  # enums: <choices>: help
    assert "<dense|spvit|hard|evit|static|tome|search>" in values["mode"].help
    assert TrainConfig.from_flags(values) == TrainConfig()  # nothing parsed: the defaults


@pytest.mark.parametrize("path", sorted(glob.glob(str(REPO / "configs" / "*.cfg"))),
                         ids=lambda p: p.rsplit("/", 1)[-1])
def test_a_config_survives_its_flagfile(path, tmp_path):
    config = TrainConfig.from_argv([f"--flagfile={path}", "--workdir=run", "--seed=3"])
    assert config.seed == 3 and config.workdir == "run"
    saved = tmp_path / "flags.txt"
    saved.write_text(config.to_flagfile())
    assert TrainConfig.from_argv([f"--flagfile={saved}"]) == config


def test_flagfile_lines_are_what_absl_reads():
    config = TrainConfig(model="m", flip=False, jit_compile=True, keep_ratios=["0.7", "0.49"],
                         lr=1e-2, budget_gflops=None)
    lines = config.to_flagfile().splitlines()
    assert "--noflip" in lines and "--jit_compile" in lines
    assert "--keep_ratios=0.7,0.49" in lines and "--lr=0.01" in lines
    assert not [line for line in lines if line.startswith("--budget_gflops")]  # unset: absent
    assert lines == sorted(lines)


def test_python_lists_become_the_tuples_flags_give():
    config = TrainConfig(pruning_locations=[2, 4], keep_ratios="0.5,0.25", model_options=[])
    assert config.pruning_locations == ("2", "4") and config.keep_ratios == ("0.5", "0.25")
    assert config.model_options == ()
    assert config == TrainConfig.from_argv(["--pruning_locations=2,4", "--keep_ratios=0.5,0.25"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0


def test_a_bad_flag_is_one_line():
    with pytest.raises(SpvitError, match="Unknown command line flag 'learning_rate'"):
        TrainConfig.from_argv(["--learning_rate=1"])
    with pytest.raises(SpvitError, match="align_to_latency_steps"):
        TrainConfig.from_argv(["--align_to_latency_steps=-1"])
    with pytest.raises(SpvitError, match="mode"):
        TrainConfig.from_argv(["--mode=prune_everything"])


@pytest.mark.parametrize("argv, message", [
    ([], "--model is required"),
    (["--model=deit_tiny_patch16_224"], "--workdir is required"),
    ([*TINY, "--budget_gflops=1", "--budget_ms=1"], "give one budget"),
    ([*TINY, "--budget_ms=1"], "--budget_ms needs --latency_table"),
    ([*TINY, "--keep_ratios=0.5", "--budget_gflops=1"], "give --keep_ratios or a budget"),
    ([*TINY, "--batch_size=0"], "--batch_size must be positive"),
    ([*TINY, "--epochs=0"], "--mode=spvit has selectors to train"),
    ([*TINY, "--mode=tome", "--epochs=0"], "pass the weights to evaluate as --checkpoint"),
    ([*TINY, "--freeze_backbone_steps=1", "--freeze_backbone_epochs=1"], "not both"),
    ([*TINY, "--cpu_replicas=2"], "--cpu_replicas needs --strategy=mirrored"),
    ([*TINY, "--mode=dense", "--align_to_latency_steps=1", "--latency_table=t"], "has none"),
    ([*TINY, "--mode=search"], "--mode=search needs --budget_gflops"),
])
def test_check_names_what_cannot_work(argv, message):
    with pytest.raises(SpvitError, match=message):
        TrainConfig.from_argv(argv).check()


def test_model_options_parse_literals_and_reject_bare_words():
    assert parse_model_options(["patch_size=4", "act=gelu", "qkv_bias=False"]) == {
        "patch_size": 4, "act": "gelu", "qkv_bias": False}
    with pytest.raises(SpvitError, match="is not key=value"):
        parse_model_options(["patch_size"])
