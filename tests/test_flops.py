import os
import re
import subprocess
import sys

import pytest

import spvit_tf
from spvit_tf import flops

# MACs of the dense 224x224 models under flops.py's counting rules, and the figures the DeiT
# and PiT papers publish. PiT-B is the one model whose MAC count does not round to its paper
# figure (12.40 vs 12.5; timm's profiler reports 12.42 GMACs); it is held to 1% instead.
EXPECTED = {
    "deit_tiny_patch16_224": (1_253_683_200, 1.3),
    "deit_small_patch16_224": (4_598_882_304, 4.6),
    "deit_base_patch16_224": (17_563_828_224, 17.6),
    "pit_ti_224": (699_059_456, 0.7),
    "pit_xs_224": (1_394_699_136, 1.4),
    "pit_s_224": (2_870_796_096, 2.9),
    "pit_b_224": (12_401_916_928, 12.5),
}
NOT_ROUNDING_TO_PAPER = {"pit_b_224"}
TINY_PIT = dict(
    image_size=32, patch_size=4, stride=2, num_classes=10, base_dims=(8, 8, 8),
    depth=(1, 1, 1), heads=(2, 4, 8),
)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dense_cost_matches_published_figures(name):
    macs, paper = EXPECTED[name]
    cost = flops.model_cost(name)
    assert cost.total_macs == macs
    if name in NOT_ROUNDING_TO_PAPER:
        assert abs(cost.gflops - paper) / paper < 0.01
    else:
        assert round(cost.gflops, 1) == paper


def test_block_macs_by_hand():
    # N=10, D=8, H=32: qkv 3*10*64 + logits 100*8 + attn·v 100*8 + proj 10*64 + mlp 2*10*8*32
    assert flops.block_macs(10, 8, 4.0) == 1920 + 800 + 800 + 640 + 5120
    # DeiT-Ti's dense block: 12*197*192^2 + 2*197^2*192
    assert flops.block_macs(197, 192) == 87_146_496 + 14_902_656


def test_fewer_tokens_cost_strictly_less():
    costs = [flops.block_macs(n, 384) for n in (197, 196, 100, 2)]
    assert costs == sorted(costs, reverse=True) and len(set(costs)) == len(costs)
    dense = flops.model_cost("pit_s_224")
    tokens = list(dense.tokens_per_block)
    tokens[5] -= 1
    assert flops.model_cost("pit_s_224", tokens).total_macs < dense.total_macs


def test_pruned_deit_tiny_summed_by_hand():
    # 197 tokens, then 1 class + 138 / 96 / 67 patches after three pruning locations.
    tokens = [197] * 3 + [139] * 3 + [97] * 3 + [68] * 3
    cost = flops.model_cost("deit_tiny_patch16_224", tokens)
    # Per block 12*n*192^2 + 2*n^2*192 for n = 197, 139, 97, 68.
    blocks = [102_049_152, 68_908_416, 46_522_752, 31_856_640]
    assert cost.block_macs == tuple(b for b in blocks for _ in range(3))
    embed, head = 196 * 192 * (16 * 16 * 3), 192 * 1000
    assert cost.total_macs == 3 * sum(blocks) + embed + head == 777_104_256


def test_pit_stages_and_pooling():
    cost = flops.model_cost("pit_ti_224")
    assert cost.tokens_per_block == (730,) * 2 + (197,) * 6 + (50,) * 4
    assert cost.block_dims == (64,) * 2 + (128,) * 6 + (256,) * 4
    assert cost.block_stages == (0,) * 2 + (1,) * 6 + (2,) * 4
    # 27x27 -> 14x14 -> 7x7: depthwise 3x3 per output value + the class token's linear.
    assert cost.pool_macs == (14 * 14 * 128 * 9 + 64 * 128, 7 * 7 * 256 * 9 + 128 * 256)
    assert cost.embed_macs == 27 * 27 * 64 * (16 * 16 * 3)
    assert cost.head_macs == 256 * 1000


def test_distilled_models_price_the_second_token_and_head():
    plain, distilled = (flops.model_cost(n) for n in ("pit_ti_224", "pit_ti_distilled_224"))
    assert distilled.tokens_per_block == tuple(n + 1 for n in plain.tokens_per_block)
    assert distilled.head_macs == 2 * plain.head_macs


def test_overrides_change_the_price():
    small = flops.model_cost("deit_tiny_patch16_224", image_size=112, num_classes=10)
    assert small.tokens_per_block == (50,) * 12
    assert small.head_macs == 192 * 10
    assert flops.model_cost("deit_tiny_patch16_224", depth=6).block_macs == (
        flops.model_cost("deit_tiny_patch16_224").block_macs[:6]
    )


@pytest.mark.parametrize(
    "name,tokens,message",
    [
        ("deit_tiny_patch16_224", [197] * 11, "has 11 entries but deit_tiny_patch16_224 has 12"),
        ("pit_ti_224", [730] * 12 + [50], "has 13 entries but pit_ti_224 has 12"),
        ("deit_tiny_patch16_224", [197] * 11 + [98.5], "must be integers"),
        ("deit_tiny_patch16_224", [197] * 11 + [0], "(11, 0)"),
        ("deit_tiny_distilled_patch16_224", [198] * 11 + [1], "at least its 2 prefix"),
    ],
)
def test_tokens_per_block_is_validated(name, tokens, message):
    with pytest.raises(spvit_tf.SpvitError, match=re.escape(message)):
        flops.model_cost(name, tokens)


def test_bad_names_and_options_are_user_errors():
    with pytest.raises(spvit_tf.SpvitError, match="unknown model 'deit_huge'"):
        flops.model_cost("deit_huge")
    with pytest.raises(spvit_tf.SpvitError, match="has no option"):
        flops.model_cost("pit_ti_224", embed_dim=10)
    with pytest.raises(spvit_tf.SpvitError, match="smaller than patch_size"):
        flops.model_cost("deit_tiny_patch16_224", image_size=8)


def test_built_model_is_priced_like_its_name():
    model = spvit_tf.create_model("pit_ti_224", **TINY_PIT)
    assert flops.model_cost(model) == flops.model_cost("pit_ti_224", **TINY_PIT)
    with pytest.raises(spvit_tf.SpvitError, match="registered names only"):
        flops.model_cost(model, num_classes=5)


def test_architecture_from_config_needs_no_registry():
    config = dict(
        image_size=224, patch_size=16, in_chans=3, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0,
        num_classes=1000, distilled=False,
    )
    cost = flops.architecture_from_config("vit", config).cost()
    assert cost.total_macs == EXPECTED["deit_tiny_patch16_224"][0]
    with pytest.raises(spvit_tf.SpvitError, match="no token geometry for family 'swin'"):
        flops.architecture_from_config("swin", config)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "spvit_tf.flops", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )


def test_cli_prints_figure_params_and_table():
    result = _cli("--model=deit_tiny_patch16_224")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "model: deit_tiny_patch16_224" in out
    assert "GFLOPs: 1.254 (1.3 as the papers round it)" in out
    assert "params: 5.72 M" in out
    assert sum(line.split()[0].startswith("block_") for line in out.splitlines()[3:]) == 12


def test_cli_prices_a_token_schedule():
    tokens = ",".join(["197"] * 3 + ["139"] * 3 + ["97"] * 3 + ["68"] * 3)
    result = _cli("--model=deit_tiny_patch16_224", f"--tokens={tokens}", "--noparams")
    assert result.returncode == 0, result.stderr
    assert "GFLOPs: 0.777 (0.8 as the papers round it)" in result.stdout


def test_cli_unknown_model_is_one_line_exit_2():
    result = _cli("--model=deit_huge")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: unknown model 'deit_huge'")


# --- pruned configurations -----------------------------------------------------------------

DEIT_SCHEDULE = dict(locations=(3, 6, 9), keep_ratios=(0.7, 0.49, 0.343))
PIT_SCHEDULE = dict(locations=(1, 3, 6, 9), keep_ratios=(0.7, 0.7, 0.5, 0.6))


def test_pruned_deit_token_schedule_includes_package_tokens():
    cost = flops.model_cost("deit_tiny_patch16_224", pruning=dict(DEIT_SCHEDULE, method="spvit"))
    # k = round(ratio * 196) = 137, 96, 67 patches, + class token, + one package per stage
    assert cost.tokens_per_block == (197,) * 3 + (139,) * 3 + (99,) * 3 + (71,) * 3
    hard = flops.model_cost("deit_tiny_patch16_224", pruning=dict(DEIT_SCHEDULE, method="hard"))
    assert hard.tokens_per_block == (197,) * 3 + (138,) * 3 + (97,) * 3 + (68,) * 3
    assert hard.total_macs < cost.total_macs < flops.model_cost("deit_tiny_patch16_224").total_macs


def test_selector_macs_by_hand():
    # DeiT-Ti: 3 heads of 64, per token 64*64 + 32*32 (local half) + 32*16 + 16*2 = 5664 per
    # head and the gate's 2*3*1; per image the context half's 32*32 per head
    assert flops.selector_macs(196, 192, 3) == 196 * (3 * 5664 + 6) + 3 * 32 * 32
    cost = flops.model_cost("deit_tiny_patch16_224", pruning=dict(DEIT_SCHEDULE, method="spvit"))
    assert cost.scorer_macs == tuple(flops.selector_macs(n, 192, 3) for n in (196, 137, 96))
    # package sums over the dropped tokens: 196-137, 137-96, 96-67
    assert cost.movement_macs == tuple(n * 192 for n in (59, 41, 29))


@pytest.mark.parametrize("name,schedule", [
    ("deit_tiny_patch16_224", DEIT_SCHEDULE), ("deit_small_patch16_224", DEIT_SCHEDULE),
    ("deit_base_patch16_224", DEIT_SCHEDULE), ("pit_ti_224", PIT_SCHEDULE),
    ("pit_xs_224", PIT_SCHEDULE), ("pit_s_224", PIT_SCHEDULE), ("pit_b_224", PIT_SCHEDULE),
])
def test_selectors_cost_under_two_percent_of_the_backbone(name, schedule):
    dense = flops.model_cost(name)
    pruned = flops.model_cost(name, pruning=dict(schedule, method="spvit"))
    assert 0 < sum(pruned.scorer_macs) < 0.02 * dense.total_macs
    assert pruned.total_macs < dense.total_macs


def test_pit_schedule_restarts_per_stage_and_carries_packages():
    cost = flops.model_cost("pit_ti_224", pruning=dict(PIT_SCHEDULE, method="spvit"))
    # stage grids 729 / 196 / 49; keep 510 | 137 then 98 | 29; packages 1, 2, 3, 4 carried
    assert cost.tokens_per_block == (730, 512, 198, 140, 140, 140, 102, 102, 53, 34, 34, 34)
    dense = flops.model_cost("pit_ti_224")
    # the pooling linears also carry the package tokens (1 into stage 1, 3 into stage 2)
    assert cost.pool_macs[0] - dense.pool_macs[0] == 1 * 64 * 128
    assert cost.pool_macs[1] - dense.pool_macs[1] == 3 * 128 * 256


def test_a_built_pruned_model_is_priced_with_its_schedule():
    model = spvit_tf.create_model(
        "deit_tiny_patch16_224", pruning=dict(DEIT_SCHEDULE, method="evit", selection="matmul")
    )
    cost = flops.model_cost(model)
    assert cost.tokens_per_block[-1] == 71
    assert cost.movement_macs[0] == 59 * 192 + 196 * 196 * 192  # package + sorting matmul


def test_cli_prices_a_pruned_model():
    result = subprocess.run(
        [sys.executable, "-m", "spvit_tf.flops", "--model=deit_tiny_patch16_224", "--noparams",
         "--pruning=spvit", "--pruning_locations=3,6,9", "--keep_ratios=0.7,0.49,0.343"],
        capture_output=True, text=True, check=True,
    )
    assert "GFLOPs: 0.792" in result.stdout
    assert re.search(r"pruned/dense: 0\.63\d; selectors: 7\.30 MMACs \(0\.58% of the backbone\)",
                     result.stdout)


def test_evit_scores_the_keys_entering_its_location():
    """EViT's score reads the keys of the sequence entering the location (class token, the
    patches and the packages earlier locations appended: what the block before it ran on),
    not the package this step appends."""
    from spvit_tf.pruning.methods.evit import class_attention_macs

    cost = flops.model_cost("deit_tiny_patch16_224", pruning=dict(DEIT_SCHEDULE, method="evit"))
    entering = [cost.tokens_per_block[block - 1] for block in DEIT_SCHEDULE["locations"]]
    assert entering == [197, 1 + 137 + 1, 1 + 96 + 2]
    assert list(cost.scorer_macs) == [class_attention_macs(n, 192) for n in entering]
