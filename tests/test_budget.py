import json
import logging

import numpy as np
import pytest

from spvit_tf import budget, flops, latency_table
from spvit_tf.errors import SpvitError

DEIT = "deit_tiny_patch16_224"
LOCATIONS = (3, 6, 9)
# A CIFAR-shaped DeiT: 64 patch tokens + the class token, 4 blocks of width 48.
TINY = dict(image_size=32, patch_size=4, num_classes=10, embed_dim=48, depth=4, num_heads=3)


def geometric(rho, n=3):
    return tuple(round(rho**j, 3) for j in range(1, n + 1))


def gflops(name, ratios, locations=LOCATIONS, method="spvit", **options):
    pruning = dict(method=method, locations=locations, keep_ratios=ratios)
    return flops.model_cost(name, **options, pruning=pruning).gflops


def test_geometric_schedule_is_the_mildest_meeting_a_gflops_budget():
    dense = flops.model_cost(DEIT).gflops
    target = 0.65 * dense  # 35% fewer GFLOPs
    ratios, cost, dense_cost = budget.schedule_for_budget(DEIT, budget=target, locations=LOCATIONS)
    assert dense_cost == pytest.approx(dense)
    assert ratios == geometric(ratios[0])
    assert cost == pytest.approx(gflops(DEIT, ratios))  # the returned schedule is the priced one
    assert cost <= target
    assert gflops(DEIT, geometric(ratios[0] + 0.01)) > target  # and no milder one fits


def test_linear_shape_drops_tokens_evenly():
    target = 0.65 * flops.model_cost(DEIT).gflops
    ratios, cost, _ = budget.schedule_for_budget(
        DEIT, budget=target, locations=LOCATIONS, shape="linear"
    )
    rho = ratios[-1]
    assert ratios == pytest.approx((1 - (1 - rho) / 3, 1 - 2 * (1 - rho) / 3, rho), abs=1e-3)
    assert cost <= target
    with pytest.raises(SpvitError, match="unknown schedule shape"):
        budget.schedule_for_budget(DEIT, budget=target, locations=LOCATIONS, shape="cosine")


def test_selection_option_is_priced():
    target = 0.65 * flops.model_cost(DEIT).gflops
    gather = budget.schedule_for_budget(DEIT, budget=target, locations=LOCATIONS)
    matmul = budget.schedule_for_budget(
        DEIT, budget=target, locations=LOCATIONS, overrides={"pruning": {"selection": "matmul"}}
    )
    assert matmul.keep_ratios[0] < gather.keep_ratios[0]  # the one-hot matmul costs MACs


def test_impossible_budget_is_one_clear_error():
    floor = gflops(DEIT, (0.001,) * 3)  # one token kept at every location
    with pytest.raises(SpvitError, match=r"budget 0\.3 below what any geometric schedule"):
        budget.schedule_for_budget(DEIT, budget=0.3, locations=LOCATIONS)
    assert floor > 0.3
    assert budget.schedule_for_budget(DEIT, budget=floor, locations=LOCATIONS).cost <= floor
    with pytest.raises(SpvitError, match="positive number"):
        budget.schedule_for_budget(DEIT, budget=-1, locations=LOCATIONS)
    with pytest.raises(SpvitError, match="outside"):
        budget.schedule_for_budget(DEIT, budget=1.0, locations=(3, 12))
    with pytest.raises(SpvitError, match=r"needs overrides\['pruning'\]"):
        budget.flops_cost(DEIT, {"image_size": 224})


def test_dense_model_meeting_the_budget_keeps_every_token(caplog):
    dense = flops.model_cost(DEIT).gflops
    with caplog.at_level(logging.WARNING, logger="spvit_tf"):
        result = budget.schedule_for_budget(DEIT, budget=dense, locations=LOCATIONS)
    assert result == (
        (1.0, 1.0, 1.0), pytest.approx(dense), pytest.approx(dense)
    )
    assert "already meets the budget" in caplog.text


def test_pit_schedule_restarts_at_each_stage():
    # pit_ti blocks: stage 0 = 0-1, stage 1 = 2-7, stage 2 = 8-11.
    locations = (1, 3, 5, 9)
    target = 0.6 * flops.model_cost("pit_ti_224").gflops
    ratios, cost, _ = budget.schedule_for_budget("pit_ti_224", budget=target, locations=locations)
    rho = ratios[0]
    assert ratios == pytest.approx((rho, rho, rho**2, rho), abs=1e-3)
    assert cost == pytest.approx(gflops("pit_ti_224", ratios, locations)) and cost <= target
    milder = (rho + 0.01, rho + 0.01, round((rho + 0.01) ** 2, 3), rho + 0.01)
    assert gflops("pit_ti_224", milder, locations) > target


LEARNED = [1, 1, 0.98, 0.7, 0.69, 0.7, 0.5, 0.49, 0.5, 0.5, 0.35, 0.34]


def test_merge_into_phases_groups_neighbours_and_drops_unpruned_phase():
    # Block 2 (0.98) joins blocks 0-1; that phase keeps ≥ 0.99 on average and is dropped.
    assert budget.merge_into_phases(LEARNED) == [(3, 0.697), (6, 0.497), (10, 0.345)]
    # A tighter tolerance splits 0.98 off into a phase of its own.
    assert budget.merge_into_phases(LEARNED, tolerance=0.015)[0] == (2, 0.98)
    # A looser one merges the 0.7 and 0.5 runs: 0.5 is within 0.21 of the 0.697 mean, and
    # 0.35 is not within 0.21 of the merged run's mean (4.08 / 7 = 0.583).
    assert budget.merge_into_phases(LEARNED, tolerance=0.21) == [(3, 0.583), (10, 0.345)]
    # Joining is judged against the running mean: at 0.3 the 0.7 run joins blocks 0-2
    # (|0.7 − 0.993| < 0.3) and the phase mean falls to 5.07 / 6; 0.5 then starts a phase.
    assert budget.merge_into_phases(LEARNED, tolerance=0.3) == [(0, 0.845), (6, 0.447)]


def test_merge_keeps_phases_non_increasing_within_a_stage():
    # 0.6 after 0.5 would grow the schedule back: capped to 0.5, that selector is dropped.
    assert budget.merge_into_phases([0.8, 0.8, 0.5, 0.5, 0.6, 0.6, 0.3]) == [
        (0, 0.8), (2, 0.5), (6, 0.3)
    ]
    # At a PiT stage start the ratio refers to a fresh grid and may be higher again.
    assert budget.merge_into_phases([0.8, 0.5, 0.7, 0.7, 0.4], stage_starts=(2,)) == [
        (0, 0.8), (1, 0.5), (2, 0.7), (4, 0.4)
    ]
    with pytest.raises(SpvitError, match=r"in \(0, 1\]"):
        budget.merge_into_phases([1.0, 0.0])
    with pytest.raises(SpvitError, match="tolerance"):
        budget.merge_into_phases([0.5], tolerance=0)


def test_fit_phases_to_budget_scales_the_learned_shape():
    phases = budget.merge_into_phases(LEARNED)  # [(3, 0.697), (6, 0.497), (10, 0.345)]
    locations = [start for start, _ in phases]
    dense = flops.model_cost(DEIT).gflops
    target = 0.5 * dense  # tighter than the learned schedule: scaled down
    ratios, cost, _ = budget.fit_phases_to_budget(phases, DEIT, budget=target)
    assert cost == pytest.approx(gflops(DEIT, ratios, locations)) and cost <= target
    scale = ratios[-1] / 0.345
    assert scale < 1
    assert ratios == pytest.approx([scale * r for _, r in phases], abs=2e-3)
    assert gflops(DEIT, [(scale + 0.01) * r for _, r in phases], locations) > target
    # Looser than even the learned shape scaled until its first phase keeps everything.
    ratios, cost, _ = budget.fit_phases_to_budget(phases, DEIT, budget=0.85 * dense)
    assert ratios == (1.0, round(0.497 / 0.697, 3), round(0.345 / 0.697, 3))
    assert cost <= 0.85 * dense
    with pytest.raises(SpvitError, match="nothing to prune"):
        budget.fit_phases_to_budget([], DEIT, budget=1.0)


def test_flagfile_fragment():
    assert budget.flagfile_fragment((3, 6, 9), (0.7, 0.49, 0.343)) == (
        "--mode=spvit\n--pruning_locations=3,6,9\n--keep_ratios=0.7,0.49,0.343\n"
    )
    assert "--keep_ratios=1,0.5\n" in budget.flagfile_fragment([2, 5], [1.0, 0.50001], "hard")
    with pytest.raises(SpvitError, match="one keep ratio per location"):
        budget.flagfile_fragment((3, 6), (0.7,))


# Latency tables: a synthetic one whose times are linear in tokens, so interpolation is exact.
BLOCK = (0.05, 0.01)  # ms = a + b * tokens
SELECTOR = (0.02, 0.001)
PRUNE = (0.01, 0.0005)
FIXED = {"patch_embed": 0.4, "head": 0.01}


def linear(coeffs, tokens):
    return [coeffs[0] + coeffs[1] * n for n in tokens]


def synthetic_table(grid=(1, 20, 40, 70)):
    return {
        "format": latency_table.TABLE_FORMAT, "model": DEIT, "model_config": dict(TINY),
        "target": "host", "device": "test", "backend": "cpu", "num_threads": 1,
        "stages": [{
            "dim": 48, "heads": 3, "blocks": [0, 1, 2, 3], "tokens": list(grid),
            "block_ms": linear(BLOCK, grid), "selector_ms": linear(SELECTOR, grid),
            "prune_ms": linear(PRUNE, grid),
        }],
        "fixed_ms": dict(FIXED),
    }


def write(tmp_path, table, name="table.json"):
    path = tmp_path / name
    path.write_text(json.dumps(table))
    return path


def test_predict_latency_is_fixed_plus_blocks_plus_locations():
    table = synthetic_table()
    got = budget.predict_latency_ms(
        table, [65, 65, 34, 18], locations=[2, 3], location_tokens=[64, 32]
    )
    want = (
        sum(FIXED.values()) + sum(linear(BLOCK, [65, 65, 34, 18]))
        + sum(linear(SELECTOR, [64, 32])) + sum(linear(PRUNE, [64, 32]))
    )
    assert got == pytest.approx(want)
    # Outside the measured grid the end values are used (clamped, not extrapolated).
    clamped = budget.predict_latency_ms(table, [100, 65, 34, 18])
    assert clamped == pytest.approx(budget.predict_latency_ms(table, [70, 65, 34, 18]))
    with pytest.raises(SpvitError, match="one per block"):
        budget.predict_latency_ms(table, [65, 65])


def test_latency_table_round_trip_prices_a_schedule(tmp_path):
    path = write(tmp_path, synthetic_table())
    table = latency_table.load_latency_table(path, model=DEIT)
    assert table["tflite_format"] == "fp32"  # a table without the key was timed in fp32
    spvit = budget.latency_cost(table, DEIT, dict(TINY, pruning=dict(locations=(2,))))
    fixed, location = sum(FIXED.values()), linear(SELECTOR, [64])[0] + linear(PRUNE, [64])[0]
    assert spvit(None) == pytest.approx(fixed + sum(linear(BLOCK, [65] * 4)))
    # keep 0.5 of 64 patches at block 2: blocks 0-1 see 1 + 64, blocks 2-3 see 1 + 32 + package.
    assert spvit((0.5,)) == pytest.approx(fixed + sum(linear(BLOCK, [65, 65, 34, 34])) + location)
    # `static` has no package token and no selector to time.
    static_options = dict(TINY, pruning=dict(method="static", locations=(2,)))
    static = budget.latency_cost(table, DEIT, static_options)
    want = fixed + sum(linear(BLOCK, [65, 65, 33, 33])) + linear(PRUNE, [64])[0]
    assert static((0.5,)) == pytest.approx(want)


def test_schedule_for_a_latency_budget(tmp_path):
    path = write(tmp_path, synthetic_table())
    common = dict(locations=(1, 2, 3), cost="latency", latency_table=str(path), overrides=TINY)
    ratios, cost, dense = budget.schedule_for_budget(DEIT, budget=2.2, **common)
    assert cost <= 2.2 < dense
    cost_fn = budget.latency_cost(
        latency_table.load_latency_table(path), DEIT, dict(TINY, pruning=dict(locations=(1, 2, 3)))
    )
    assert cost_fn(ratios) == pytest.approx(cost)
    assert cost_fn(geometric(ratios[0] + 0.01)) > 2.2
    with pytest.raises(SpvitError, match="needs latency_table"):
        budget.schedule_for_budget(DEIT, budget=2.2, locations=(1,), cost="latency", overrides=TINY)
    with pytest.raises(SpvitError, match="unknown cost"):
        budget.schedule_for_budget(DEIT, budget=2.2, locations=(1,), cost="joules", overrides=TINY)


def staircase_table(tile=8, step=0.05):
    """Every length 1-70 timed; a block pays `step` ms for each started tile of `tile` rows."""
    table = synthetic_table(range(1, 71))
    table["stages"][0]["block_ms"] = [
        0.1 + 0.001 * n + step * -(-n // tile) for n in table["stages"][0]["tokens"]
    ]
    return table


@pytest.mark.parametrize("method, ratios, counts", [
    # spvit keeps 32 of 64 at block 2: blocks 2-3 see 1 + 32 + package = 34 = 4 tiles + 2,
    # two tokens dearer than average each (one more tile): both go
    ("spvit", (0.5,), (30,)),
    ("hard", (0.5,), (31,)),  # 1 + 32 = 33: one token past 4 tiles
    ("hard", (0.484,), (31,)),  # 1 + 31 = 32 fills the tiles: nothing moves
    # two locations, as many steps: each trimmed, the first one first
    ("hard", (0.766, 0.5), (47, 31)),
])
def test_align_to_latency_steps_drops_tokens_that_cost_a_tile(tmp_path, method, ratios, counts):
    path = write(tmp_path, staircase_table())
    locations = (1, 2)[-len(ratios):]  # one location: block 2
    aligned = budget.align_to_latency_steps(
        path, DEIT, ratios, locations=locations, method=method, overrides=TINY
    )
    assert aligned.counts == counts
    cost_fn = budget.latency_cost(
        latency_table.load_latency_table(path), DEIT,
        dict(TINY, pruning=dict(method=method, locations=locations)),
    )
    assert aligned.predicted_ms == pytest.approx(cost_fn(aligned.keep_ratios))
    assert aligned.unaligned_ms == pytest.approx(cost_fn(ratios))
    assert aligned.predicted_ms <= aligned.unaligned_ms
    config = flops.architecture(DEIT, **TINY).schedule.stages[0].num_patches
    assert tuple(round(r * config) for r in aligned.keep_ratios) == counts


def test_align_to_latency_steps_leaves_a_smooth_table_alone(tmp_path):
    path = write(tmp_path, synthetic_table(range(1, 71)))  # linear: no token dearer than average
    aligned = budget.align_to_latency_steps(path, DEIT, (0.766, 0.5), locations=(1, 2),
                                            overrides=TINY)
    assert aligned.keep_ratios == (0.766, 0.5) and aligned.counts == (49, 32)
    assert aligned.predicted_ms == pytest.approx(aligned.unaligned_ms)
    unchanged = budget.align_to_latency_steps(
        write(tmp_path, staircase_table(), "steps.json"), DEIT, (0.5,), locations=(2,),
        overrides=TINY, max_trim=0,
    )
    assert unchanged.counts == (32,)
    with pytest.raises(SpvitError, match="max_trim"):
        budget.align_to_latency_steps(path, DEIT, (0.5,), locations=(2,), overrides=TINY,
                                      max_trim=-1)


def test_every_count_has_a_keep_ratio():
    for tokens in (16, 64, 196, 785):
        for count in range(1, tokens + 1):
            ratio = budget._ratio_for_count(count, tokens)
            assert max(1, round(ratio * tokens)) == count


def test_non_monotone_latency_table_is_refused(tmp_path):
    table = synthetic_table()
    table["stages"][0]["block_ms"][2] = 0.0  # faster at 40 tokens than at 20
    with pytest.raises(SpvitError, match="grows with the tokens kept"):
        budget.schedule_for_budget(
            DEIT, budget=2.2, locations=(1, 2, 3), cost="latency", latency_table=table,
            overrides=TINY,
        )


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda t: t.update(format="other.v0"), "is not a spvit_tf.latency_table.v1 table"),
        (lambda t: t.pop("model_config"), "'model_config'"),
        (lambda t: t["stages"][0].pop("prune_ms"), "needs keys"),
        (lambda t: t["stages"][0].update(tokens=[20, 1, 40, 70]), "increasing positive integers"),
        (lambda t: t["stages"][0]["block_ms"].pop(), "one time per token count"),
        (lambda t: t["stages"][0]["selector_ms"].__setitem__(0, -1), "non-negative ms"),
        (lambda t: t["stages"][0].update(blocks=[0, 1, 3]), "cover 0..depth-1"),
        (lambda t: t.update(fixed_ms={"head": "fast"}), "fixed_ms"),
    ],
)
def test_bad_tables_are_one_line_errors(tmp_path, corrupt, message):
    table = synthetic_table()
    corrupt(table)
    path = write(tmp_path, table)
    with pytest.raises(SpvitError, match=message) as error:
        latency_table.load_latency_table(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_unreadable_or_mismatched_tables(tmp_path):
    with pytest.raises(SpvitError, match="not found"):
        latency_table.load_latency_table(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": ')
    with pytest.raises(SpvitError, match=r"not valid JSON \(line 1"):
        latency_table.load_latency_table(bad)
    path = write(tmp_path, synthetic_table())
    with pytest.raises(SpvitError, match="measured for deit_tiny_patch16_224, not pit_ti_224"):
        latency_table.load_latency_table(path, model="pit_ti_224")
    table = latency_table.load_latency_table(path)
    other = dict(TINY, embed_dim=96, pruning=dict(method="spvit", locations=(2,)))
    with pytest.raises(SpvitError, match="different configuration"):
        budget.latency_cost(table, DEIT, other)
    evit = dict(TINY, pruning=dict(method="evit", locations=(2,)))
    with pytest.raises(SpvitError, match="price evit with cost='gflops'"):
        budget.latency_cost(table, DEIT, evit)
    wrong_stage = synthetic_table()
    wrong_stage["stages"][0]["dim"] = 64
    with pytest.raises(SpvitError, match="do not match"):
        budget.latency_cost(wrong_stage, DEIT, dict(TINY, pruning=dict(locations=(2,))))


def test_fit_phases_to_a_latency_budget(tmp_path):
    path = write(tmp_path, synthetic_table())
    phases = budget.merge_into_phases([0.9, 0.6, 0.58, 0.3])
    assert phases == [(0, 0.9), (1, 0.59), (3, 0.3)]
    ratios, cost, dense = budget.fit_phases_to_budget(
        phases, DEIT, budget=2.0, cost="latency", latency_table=path, overrides=TINY
    )
    assert cost <= 2.0 < dense
    assert np.all(np.diff(ratios) <= 0)
