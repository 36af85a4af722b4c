"""`TokenSchedule` pinned to known figures, and its consumers agreeing with it."""

import numpy as np
import pytest

from spvit_tf import flops
from spvit_tf.errors import SpvitError
from spvit_tf.geometry import (
    Stage, TokenSchedule, kept_tokens, pit_schedule, schedule_from_config, vit_schedule,
)
from spvit_tf.pruning.methods import method_names

DEIT_TI = dict(image_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3)
PIT_TI = dict(image_size=224, patch_size=16, stride=8, base_dims=(32, 32, 32), depth=(2, 6, 4),
              heads=(2, 4, 8))
SPVIT = dict(locations=(3, 6, 9), keep_ratios=(0.7, 0.49, 0.343))
PIT_SCHEDULE = dict(locations=(1, 3, 6, 9), keep_ratios=(0.7, 0.7, 0.5, 0.6))
# DeiT-Ti at 224: 196 patches + the class token; keep round(ratio * 196) = 137, 96, 67.
DEIT_PACKAGED = (197,) * 3 + (139,) * 3 + (99,) * 3 + (71,) * 3
DEIT_DISCARDED = (197,) * 3 + (138,) * 3 + (97,) * 3 + (68,) * 3


def deit(method, **pruning):
    return vit_schedule(**DEIT_TI, pruning=dict(SPVIT, method=method, **pruning))


def test_deit_tiny_spvit_schedule():
    schedule = deit("spvit")
    (stage,) = schedule.stages
    assert stage == Stage(dim=192, heads=3, grid=(14, 14), first_block=0, depth=12)
    assert schedule.num_prefix == 1 and not schedule.tracks_grid
    assert schedule.kept == (137, 96, 67)
    assert [s.patches_in for s in schedule.steps] == [196, 137, 96]
    assert [(s.packages_in, s.packages_out) for s in schedule.steps] == [(0, 1), (1, 2), (2, 3)]
    assert [s.step_fraction for s in schedule.steps] == pytest.approx([0.7, 0.7, 0.7])
    assert [(s.stage_position, s.stage_steps) for s in schedule.steps] == [(1, 3), (2, 3), (3, 3)]
    assert schedule.tokens_per_block == DEIT_PACKAGED
    assert [b.location for b in schedule.blocks] == [None] * 3 + [0] * 3 + [1] * 3 + [2] * 3
    assert schedule.step_at(6) is schedule.steps[1] and schedule.step_at(7) is None


@pytest.mark.parametrize("method,tokens", [
    ("spvit", DEIT_PACKAGED), ("evit", DEIT_PACKAGED),  # EViT fuses the dropped into a token
    ("hard", DEIT_DISCARDED), ("static", DEIT_DISCARDED), ("tome", DEIT_DISCARDED),
])
def test_package_policy_comes_from_the_method(method, tokens):
    schedule = deit(method)
    assert schedule.kept == (137, 96, 67)  # every method meets the same counts
    assert schedule.tokens_per_block == tokens


def test_dense_schedule():
    schedule = vit_schedule(**DEIT_TI, distilled=True)
    assert schedule.steps == () and schedule.pruning is None
    assert schedule.tokens_per_block == (198,) * 12
    assert schedule.with_pruning(dict(SPVIT, method="hard")).tokens_per_block == tuple(
        n + 1 for n in DEIT_DISCARDED
    )


def test_pit_tiny_pools_its_grids_and_carries_packages():
    schedule = pit_schedule(**PIT_TI, pruning=dict(PIT_SCHEDULE, method="spvit"))
    assert [(s.dim, s.heads, s.grid, list(s.blocks)) for s in schedule.stages] == [
        (64, 2, (27, 27), [0, 1]), (128, 4, (14, 14), list(range(2, 8))),
        (256, 8, (7, 7), list(range(8, 12))),
    ]
    assert schedule.tracks_grid and schedule.block_stages == (0,) * 2 + (1,) * 6 + (2,) * 4
    # each stage restarts from its own grid: 510 of 729 | 137 then 98 of 196 | 29 of 49
    assert schedule.kept == (510, 137, 98, 29)
    assert [s.patches_in for s in schedule.steps] == [729, 196, 137, 49]
    assert [(s.first_in_stage, s.last_in_stage) for s in schedule.steps] == [
        (True, True), (True, False), (False, True), (True, True)]
    assert schedule.tokens_per_block == (730, 512, 198, 140, 140, 140, 102, 102, 53, 34, 34, 34)
    # pooling's linear layer carries the class token and the packages of earlier stages
    assert [schedule.non_spatial_into(s) for s in range(3)] == [1, 2, 4]


def test_pit_step_fractions_restart_per_stage():
    tiny = dict(PIT_TI, image_size=32, patch_size=4, stride=2, depth=(2, 2, 2), heads=(1, 2, 4))
    pruning = dict(method="spvit", locations=(1, 2, 3, 5), keep_ratios=(0.6, 0.75, 0.5, 0.5))
    schedule = pit_schedule(**tiny, pruning=pruning)
    assert [s.grid for s in schedule.stages] == [(15, 15), (8, 8), (4, 4)]
    assert schedule.kept == (135, 48, 32, 8)
    assert [s.step_fraction for s in schedule.steps] == pytest.approx([0.6, 0.75, 0.5 / 0.75, 0.5])


def test_step_shape_is_what_the_methods_price():
    schedule = deit("evit", selection="matmul")
    shape = schedule.step_shape(2)
    assert (shape.patches_in, shape.patches_out, shape.prefix, shape.packages_in) == (96, 67, 1, 2)
    assert (shape.dim, shape.heads, shape.selection, shape.track_grid) == (192, 3, "matmul", False)


def test_kept_tokens_rounds_and_keeps_one():
    assert [kept_tokens(r, 196) for r in (0.7, 0.49, 0.343, 0.001, 1.0)] == [137, 96, 67, 1, 196]


@pytest.mark.parametrize("pruning,message", [
    (dict(locations=(1, 2, 30), keep_ratios=(0.5, 0.4, 0.3)), "location 30 is outside blocks 0..11"),
    (dict(locations=(1, 2), keep_ratios=(0.5, 0.6)), "keep ratios are cumulative"),
])
def test_schedules_a_model_cannot_run_are_refused(pruning, message):
    with pytest.raises(SpvitError, match=message):
        vit_schedule(**DEIT_TI, pruning=pruning)


def test_configs_without_a_geometry_are_refused():
    with pytest.raises(SpvitError, match="smaller than patch_size"):
        vit_schedule(**dict(DEIT_TI, image_size=8))
    with pytest.raises(SpvitError, match="no token geometry for family 'swin'"):
        schedule_from_config("swin", DEIT_TI)


def test_round_trips_through_a_dict_and_compares_by_its_inputs():
    schedule = pit_schedule(**PIT_TI, distilled=True, pruning=dict(PIT_SCHEDULE, method="tome"))
    clone = TokenSchedule.from_dict(schedule.to_dict())
    assert clone == schedule and hash(clone) == hash(schedule)
    assert clone.tokens_per_block == schedule.tokens_per_block
    assert schedule != schedule.with_pruning(None)


@pytest.mark.parametrize("method", method_names())
@pytest.mark.parametrize("selection", ["gather", "matmul"])
def test_the_cost_model_prices_the_schedule(method, selection):
    for family, config, pruning in (("vit", DEIT_TI, SPVIT), ("pit", PIT_TI, PIT_SCHEDULE)):
        full = dict(config, in_chans=3, mlp_ratio=4.0, num_classes=1000, distilled=False,
                    pruning=dict(pruning, method=method, selection=selection))
        schedule = schedule_from_config(family, full)
        cost = flops.architecture_from_config(family, full).cost()
        assert cost.tokens_per_block == schedule.tokens_per_block
        assert cost.block_stages == schedule.block_stages
        assert cost.block_dims == tuple(schedule.stages[s].dim for s in schedule.block_stages)
        assert cost.locations == tuple(s.block for s in schedule.steps)


def test_models_pruner_and_cost_model_share_one_schedule():
    import spvit_tf

    vit = dict(image_size=32, patch_size=4, num_classes=10, embed_dim=48, depth=4, num_heads=3)
    pit = dict(image_size=32, patch_size=4, stride=2, num_classes=10, base_dims=(16, 16, 16),
               depth=(2, 2, 2), heads=(1, 2, 4))
    for name, config, pruning in (
        ("deit_tiny_distilled_patch16_224", vit, dict(locations=(1, 3), keep_ratios=(0.5, 0.25))),
        ("pit_ti_224", pit, dict(locations=(1, 2, 3, 5), keep_ratios=(0.6, 0.75, 0.5, 0.5))),
    ):
        model = spvit_tf.create_model(name, **config, pruning=dict(pruning, method="evit"))
        schedule = model.schedule
        assert schedule == schedule_from_config(type(model).family, model.get_config())
        assert model.pruner.schedule is schedule and model.pruner.counts == schedule.kept
        assert flops.architecture(model).schedule == schedule
        assert flops.architecture(name, **config, pruning=model.pruner.config.to_dict()).schedule \
            == schedule
        out = model.forward(np.zeros((1, 32, 32, 3), "float32"))
        assert [r["index"].shape[1] for r in out.records] == list(schedule.kept)
