"""SPViT's layer-to-phase search (`--mode=search`): selectors before every block train briefly
under a FLOPs budget, their per-layer keep ratios are merged into phases, and the phases are
fitted to the budget as a flagfile fragment for the real run (`<workdir>/schedule.cfg`).

Two pure pieces the trainer calls: `budget_loss` (the differentiable cost term of a step) and
`schedule` (the phases of a trained search model).
"""

from spvit_tf.train_config import dense_options


def budget_loss(model, records, target_fraction):
    """Differentiable FLOPs fraction of the sampled decisions vs `target_fraction`, per image.

    Each block is priced by `flops.block_macs` over its prefix tokens plus its stage's grid
    times the mean keep decision of the location whose count it sees (its schedule's
    `BlockTokens.location`; the whole grid before a stage's first location).
    """
    from keras import ops

    from spvit_tf.flops import block_macs

    schedule = model.schedule
    means = [ops.mean(r["decision"], axis=1) for r in records]  # (B,) per location
    dense, cost = 0.0, 0.0
    for block in schedule.blocks:
        stage = schedule.stages[block.stage]
        full = block.prefix + stage.num_patches
        if block.location is not None:
            n = block.prefix + stage.num_patches * means[block.location]
        else:
            n = full
        dense += block_macs(full, stage.dim, model.mlp_ratio)
        cost = cost + block_macs(n, stage.dim, model.mlp_ratio)
    return (cost / dense - target_fraction) ** 2


def schedule(model, model_name, model_config, eval_data, budget_gflops, tolerance):
    """(per-layer keep ratios, flagfile fragment) of a trained search model: its Gumbel keep
    ratios on a few eval batches, merged into phases (never across a PiT stage boundary) and
    fitted to `budget_gflops`."""
    import numpy as np

    from spvit_tf import budget

    ratios = []
    for images, _ in eval_data.take(8):
        out = model.forward(images, training=False, mode="gumbel")
        ratios.append([float(np.mean(r["decision"])) for r in out.records])
    layer_ratios = np.mean(ratios, axis=0).tolist()
    locations = model.pruner.locations  # layer j's selector sits before block j + 1
    stage_starts = {stage.first_block for stage in model.stages[1:]}  # PiT; none for a ViT
    starts = [j for j, loc in enumerate(locations) if loc in stage_starts]
    merged = budget.merge_into_phases(layer_ratios, tolerance=tolerance, stage_starts=starts)
    phases = [(locations[j], ratio) for j, ratio in merged]
    fitted = budget.fit_phases_to_budget(
        phases, model_name, budget=budget_gflops, overrides=dense_options(model_config)
    )
    fragment = budget.flagfile_fragment([loc for loc, _ in phases], fitted.keep_ratios, "spvit")
    return layer_ratios, fragment
