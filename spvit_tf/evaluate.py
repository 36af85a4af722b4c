"""Evaluation: `python -m spvit_tf.evaluate --workdir=W` prints top-1/top-5, GFLOPs, keep ratios.

The model runs as it ships: tokens gathered at the fixed per-stage counts. A diagnostic,
`--pruning_mode=gumbel`, evaluates with the training-time decisions instead (a sampled
subset of tokens per image, about the scheduled share kept): when it scores well above the
shipped top-k, the backbone copes with pruning and the selector's ranking is what falls short.
`--output` also writes the result JSON (atomically).
"""

import json

from absl import app, flags

from spvit_tf.errors import SpvitError, parse_flags, run_cli


def accuracy(model, dataset, examples=0, pruning_mode=None):
    """(top-1, top-5, images seen) of the inference forward pass on (images, int labels);
    `pruning_mode` (`gather`, `mask`, `gumbel`) overrides a pruned model's default `gather`."""
    import numpy as np
    import tensorflow as tf

    predict = tf.function(
        lambda images: model.forward(images, training=False, mode=pruning_mode).logits)
    correct1 = correct5 = seen = 0
    for images, labels in dataset:
        logits, labels = predict(images).numpy(), labels.numpy()
        top5 = np.argsort(-logits, axis=1)[:, :5]
        take = len(labels) if not examples else min(len(labels), examples - seen)
        correct1 += int((top5[:take, 0] == labels[:take]).sum())
        correct5 += int((top5[:take] == labels[:take, None]).any(axis=1).sum())
        seen += take
        if examples and seen >= examples:
            break
    return correct1 / max(seen, 1), correct5 / max(seen, 1), seen


def evaluate_workdir(workdir, data_spec=None, examples=0, batch_size=100, pruning_mode=None):
    """Metrics dict of a training workdir's final model on its (or `data_spec`'s) eval split."""
    from spvit_tf import data
    from spvit_tf.flops import model_cost
    from spvit_tf.workdir import load_model

    model, run = load_model(workdir)
    if pruning_mode and model.pruner is None:
        raise SpvitError(f"--pruning_mode={pruning_mode} needs a pruned model; {workdir} is dense")
    split = data.load_split(data_spec or run["data"], data.EVAL)
    if list(split.class_names) != run["class_names"]:
        raise SpvitError(
            f"{data_spec} has classes {list(split.class_names)[:5]}..., the model was trained on "
            f"{run['class_names'][:5]}...: evaluate on data with the training classes"
        )
    dataset = data.to_dataset(split, image_size=run["image_size"], batch_size=batch_size,
                              training=False, crop_ratio=run["crop_ratio"],
                              mean=run["mean"], std=run["std"],
                              subset_seed=0 if examples else None)
    top1, top5, seen = accuracy(model, dataset, examples, pruning_mode)
    result = {"top1": top1, "top5": top5, "examples": seen, "gflops": model_cost(model).gflops}
    if model.pruner is not None:
        result["pruning_mode"] = pruning_mode or "gather"
        result["keep_ratios"] = list(model.pruner.config.keep_ratios)
        result["kept_tokens"] = list(model.pruner.counts)
    return result


def main(argv):
    if len(argv) > 1:
        raise SpvitError(f"unexpected arguments {argv[1:]}; options are passed as --flag=value")
    if not flags.FLAGS.workdir:
        raise SpvitError("--workdir is required: the --workdir of a python -m spvit_tf.train run")
    result = evaluate_workdir(flags.FLAGS.workdir, flags.FLAGS.data, flags.FLAGS.eval_examples,
                              pruning_mode=flags.FLAGS.pruning_mode)
    text = json.dumps(result, indent=2)
    if flags.FLAGS.output:
        from spvit_tf.workdir import atomic_write

        atomic_write(flags.FLAGS.output, text + "\n")
    print(text)


if __name__ == "__main__":
    from spvit_tf.pruning.tokens import MODES

    flags.DEFINE_string("workdir", None, "A training workdir.")
    flags.DEFINE_string("data", None, "Evaluate on this source instead of the run's.")
    flags.DEFINE_integer("eval_examples", 0, "At most this many examples (0: all).")
    flags.DEFINE_enum("pruning_mode", None, MODES, "Pruned models: token decisions (default: "
                      "gather, as shipped; gumbel: the training-time sampling).")
    flags.DEFINE_string("output", None, "Also write the result JSON here.")
    app.run(run_cli(main), flags_parser=parse_flags)
