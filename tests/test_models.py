import subprocess
import sys

import numpy as np
import pytest

import spvit_tf
from conftest import REPO, timm_fixture

# Small CIFAR-shaped configs keep these tests fast on 2 cores.
TINY_VIT = dict(image_size=32, patch_size=4, num_classes=10, embed_dim=48, depth=2, num_heads=3)
TINY_PIT = dict(
    image_size=32, patch_size=4, stride=2, num_classes=10, base_dims=(8, 8, 8),
    depth=(1, 1, 1), heads=(2, 4, 8),
)


def test_registry_lists_every_paper_backbone():
    names = spvit_tf.list_models()
    for size in ("tiny", "small", "base"):
        assert f"deit_{size}_patch16_224" in names
        assert f"deit_{size}_distilled_patch16_224" in names
    for size in ("ti", "xs", "s", "b"):
        assert f"pit_{size}_224" in names
        assert f"pit_{size}_distilled_224" in names
    assert spvit_tf.list_models("pit_*") == [n for n in names if n.startswith("pit_")]


def test_the_registry_imports_no_model():
    """Families register themselves; the registry itself pulls in neither them nor Keras."""
    code = ("import sys, spvit_tf.registry as r; "
            "assert not any(m.startswith('spvit_tf.models') for m in sys.modules); "
            "assert 'keras' not in sys.modules and r.list_models() == []")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "pit_ti_224"])
def test_timm_parity(name, timm_input):
    checkpoint, timm_logits = timm_fixture(name)
    model = spvit_tf.create_model(name, checkpoint=checkpoint)
    logits = np.asarray(model(timm_input, training=False))
    assert logits.shape == (2, 1000)
    np.testing.assert_allclose(logits, timm_logits, atol=1e-4, rtol=0)


def test_parameter_counts_match_timm():
    # meta.json of the fixtures: timm's parameter counts.
    assert spvit_tf.create_model("deit_tiny_patch16_224").count_params() == 5717416
    assert spvit_tf.create_model("pit_ti_224").count_params() == 4847272


@pytest.mark.parametrize(
    "name,overrides,prefix",
    [
        ("deit_tiny_patch16_224", TINY_VIT, 1),
        ("deit_tiny_distilled_patch16_224", TINY_VIT, 2),
        ("pit_ti_224", TINY_PIT, 1),
        ("pit_ti_distilled_224", TINY_PIT, 2),
    ],
)
def test_any_size_and_batch(name, overrides, prefix):
    model = spvit_tf.create_model(name, **overrides)
    assert model.num_prefix_tokens == prefix
    for batch in (1, 4):
        images = np.random.default_rng(batch).normal(size=(batch, 32, 32, 3)).astype("float32")
        assert tuple(model(images, training=False).shape) == (batch, 10)


def test_cifar_grid_sizes():
    vit = spvit_tf.create_model("deit_tiny_patch16_224", **TINY_VIT)
    assert vit.stages[0].num_patches == 64 and tuple(vit.pos_embed.shape) == (1, 65, 48)
    pit = spvit_tf.create_model("pit_ti_224", **TINY_PIT)
    assert [stage.grid for stage in pit.stages] == [(15, 15), (8, 8), (4, 4)]


@pytest.mark.parametrize("name,overrides", [
    ("deit_tiny_distilled_patch16_224", TINY_VIT), ("pit_ti_224", TINY_PIT),
])
def test_config_round_trip_rebuilds_the_same_model(name, overrides):
    model = spvit_tf.create_model(name, **overrides)
    clone = type(model).from_config(model.get_config())
    clone.build_weights()
    clone.set_weights(model.get_weights())
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(clone(images), model(images), atol=1e-6)


def test_keras_weights_reload_through_checkpoint(tmp_path):
    model = spvit_tf.create_model("pit_ti_224", **TINY_PIT)
    path = tmp_path / "model.weights.h5"
    model.save_weights(path)
    reloaded = spvit_tf.create_model("pit_ti_224", checkpoint=path, **TINY_PIT)
    images = np.ones((1, 32, 32, 3), "float32")
    np.testing.assert_allclose(reloaded(images), model(images), atol=1e-6)


def test_dense_keras_weights_start_a_pruned_model(tmp_path):
    """A teacher's .weights.h5 loads into its pruned twin: backbone copied, selectors fresh."""
    config = dict(image_size=32, patch_size=4, embed_dim=32, depth=3, num_heads=2, num_classes=5)
    dense = spvit_tf.create_model("deit_tiny_patch16_224", **config)
    path = tmp_path / "teacher.weights.h5"
    dense.save_weights(path)
    pruning = dict(method="spvit", locations=[1], keep_ratios=[0.5])
    pruned = spvit_tf.create_model("deit_tiny_patch16_224", checkpoint=path, pruning=pruning, **config)
    for key, (variable, _) in dense.timm_variables().items():
        np.testing.assert_array_equal(pruned.timm_variables()[key][0], variable, err_msg=key)
    assert len(pruned.weights) > len(dense.weights)  # the selectors: initialised, not loaded
    kept_all = dict(pruning, method="static", keep_ratios=[1.0])  # static: no package token
    static = spvit_tf.create_model("deit_tiny_patch16_224", checkpoint=path, pruning=kept_all, **config)
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(static(images), dense(images), atol=1e-5)


def test_keras_weights_of_another_shape_are_refused(tmp_path):
    config = dict(image_size=32, patch_size=4, embed_dim=32, depth=3, num_heads=2, num_classes=5)
    path = tmp_path / "model.weights.h5"
    spvit_tf.create_model("deit_tiny_patch16_224", **config).save_weights(path)
    pruning = dict(method="spvit", locations=[1], keep_ratios=[0.5])
    for options in (dict(depth=2), dict(depth=2, pruning=pruning), dict(embed_dim=48)):
        with pytest.raises(spvit_tf.SpvitError, match="do not fit deit_tiny.*same name and options"):
            spvit_tf.create_model("deit_tiny_patch16_224", checkpoint=path, **{**config, **options})
    junk = tmp_path / "junk.weights.h5"
    junk.write_text("not hdf5")
    with pytest.raises(spvit_tf.SpvitError, match="not a readable Keras .weights.h5"):
        spvit_tf.create_model("deit_tiny_patch16_224", checkpoint=junk, **config)


def test_bad_names_and_options_say_what_to_do():
    with pytest.raises(spvit_tf.SpvitError, match="unknown model 'deit_huge'.*deit_tiny"):
        spvit_tf.create_model("deit_huge")
    with pytest.raises(spvit_tf.SpvitError, match="no option widht.*valid options"):
        spvit_tf.create_model("deit_tiny_patch16_224", widht=3)


def test_dropped_tokens_are_excluded_from_attention():
    """A key_mask makes kept tokens independent of dropped ones (the pruning contract)."""
    from spvit_tf.layers import Block

    block = Block(16, 2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 5, 16)).astype("float32")
    keep = np.array([[1, 1, 0, 1, 0]], "float32")
    changed = x.copy()
    changed[:, [2, 4]] += 10.0
    out, out_changed = block(x, keep_mask=keep), block(changed, keep_mask=keep)
    kept = [0, 1, 3]
    np.testing.assert_allclose(np.asarray(out)[:, kept], np.asarray(out_changed)[:, kept], atol=1e-5)
    # and equals running the block on the kept tokens alone
    np.testing.assert_allclose(np.asarray(out)[:, kept], np.asarray(block(x[:, kept])), atol=1e-5)
    assert np.isfinite(np.asarray(out)).all()
