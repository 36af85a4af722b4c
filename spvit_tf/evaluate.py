"""Evaluation: `python -m spvit_tf.evaluate --workdir=W` prints top-1/top-5, GFLOPs, keep ratios.

The model runs as it ships: tokens gathered at the fixed per-stage counts. A diagnostic,
`--pruning_mode=gumbel`, evaluates with the training-time decisions instead (a sampled
subset of tokens per image, about the scheduled share kept): when it scores well above the
shipped top-k, the backbone copes with pruning and the selector's ranking is what falls short.
`--rankings=own,random,inverted,centre,evit` is the ranking diagnostic: the same model,
weights and package tokens evaluated with only the choice of kept tokens changed, plus the
spread of its own keep scores. A learned ranking is worth something only if `own` beats
`random` clearly; scores nearly equal at every position (a small within-image spread) mean
the selector learned no preference and top-k keeps an arbitrary subset.
`--output` also writes the result JSON (atomically).
"""

import json

from absl import app, flags

from spvit_tf.errors import SpvitError, parse_flags, run_cli


def accuracy(model, dataset, examples=0, pruning_mode=None, per_image=False):
    """(top-1, top-5, images seen) of the inference forward pass on (images, int labels);
    `pruning_mode` (`gather`, `mask`, `gumbel`) overrides a pruned model's default `gather`.
    `per_image` appends the boolean top-1 correctness of every image seen, in dataset order
    (for paired comparisons, `spvit_tf.stats`)."""
    import numpy as np
    import tensorflow as tf

    predict = tf.function(
        lambda images: model.forward(images, training=False, mode=pruning_mode).logits)
    correct1, correct5, seen = [], 0, 0
    for images, labels in dataset:
        logits, labels = predict(images).numpy(), labels.numpy()
        top5 = np.argsort(-logits, axis=1)[:, :5]
        take = len(labels) if not examples else min(len(labels), examples - seen)
        correct1.append(top5[:take, 0] == labels[:take])
        correct5 += int((top5[:take] == labels[:take, None]).any(axis=1).sum())
        seen += take
        if examples and seen >= examples:
            break
    correct1 = np.concatenate(correct1) if correct1 else np.zeros(0, bool)
    result = (int(correct1.sum()) / max(seen, 1), correct5 / max(seen, 1), seen)
    return (*result, correct1) if per_image else result


def keep_score_spread(model, dataset, examples=0):
    """Per pruning location, how much the model's own keep scores vary (gathered forward).

    `within_image_std`: the std of the scores over one image's tokens, averaged over images
    (near 0: the selector scores every token alike). `across_images_std` (first location
    only, where tokens are still every grid position): the std over images of one position's
    score, averaged over positions (near 0: the same positions win for every image).
    """
    import numpy as np
    import tensorflow as tf

    score = tf.function(lambda images: [r["keep_score"] for r in model.forward(
        images, training=False).records])
    per_location, seen = None, 0
    for images, _ in dataset:
        scores = [s.numpy() for s in score(images)]
        take = len(scores[0]) if not examples else min(len(scores[0]), examples - seen)
        per_location = [np.concatenate([a, s[:take]]) if per_location else s[:take]
                        for a, s in zip(per_location or scores, scores)]
        seen += take
        if examples and seen >= examples:
            break
    spread = []
    for j, s in enumerate(per_location):
        row = {"location": model.pruner.locations[j], "mean": float(s.mean()),
               "within_image_std": float(s.std(axis=1).mean())}
        if j == 0:
            row["across_images_std"] = float(s.std(axis=0).mean())
        spread.append(row)
    return spread


def ranking_diagnostic(model, dataset, rankings, examples=0):
    """{"rankings": {ranking: top-1}, "keep_score_spread": [...]} of a pruned model, each
    ranking run through the same gathered forward pass (see TokenPruner.diagnostic_ranking)."""
    from spvit_tf.pruning.tokens import RANKINGS

    unknown = sorted(set(rankings) - set(RANKINGS))
    if unknown:
        raise SpvitError(f"unknown ranking(s) {', '.join(unknown)}; choose from {', '.join(RANKINGS)}")
    top1 = {}
    try:
        for ranking in rankings:
            model.pruner.ranking = ranking
            top1[ranking] = accuracy(model, dataset, examples)[0]
    finally:
        model.pruner.ranking = "own"
    return {"rankings": top1, "keep_score_spread": keep_score_spread(model, dataset, examples)}


def evaluate_workdir(workdir, data_spec=None, examples=0, batch_size=100, pruning_mode=None,
                     rankings=()):
    """Metrics dict of a training workdir's final model on its (or `data_spec`'s) eval split;
    with `rankings`, the ranking diagnostic's too."""
    from spvit_tf import data
    from spvit_tf.flops import model_cost
    from spvit_tf.preprocessing import Preprocessor
    from spvit_tf.workdir import load_model

    model, run = load_model(workdir)
    if pruning_mode and model.pruner is None:
        raise SpvitError(f"--pruning_mode={pruning_mode} needs a pruned model; {workdir} is dense")
    if rankings and model.pruner is None:
        raise SpvitError(f"--rankings needs a pruned model; {workdir} is dense")
    if rankings and pruning_mode not in (None, "gather"):
        raise SpvitError("--rankings diagnoses the shipped gathered forward pass; drop "
                         f"--pruning_mode={pruning_mode}")
    split = data.load_split(data_spec or run["data"], data.EVAL)
    if list(split.class_names) != run["class_names"]:
        raise SpvitError(
            f"{data_spec} has classes {list(split.class_names)[:5]}..., the model was trained on "
            f"{run['class_names'][:5]}...: evaluate on data with the training classes"
        )
    preprocessor = Preprocessor.from_run(run, f"{workdir}/run.json")
    dataset = data.to_dataset(split, preprocessor=preprocessor, batch_size=batch_size,
                              training=False, subset_seed=0 if examples else None)
    from spvit_tf.stats import encode_correct, eval_order

    top1, top5, seen, correct = accuracy(model, dataset, examples, pruning_mode, per_image=True)
    result = {"top1": top1, "top5": top5, "examples": seen, "gflops": model_cost(model).gflops,
              "top1_correct": encode_correct(correct),
              "eval_order": eval_order(data_spec or run["data"], examples)}
    if model.pruner is not None:
        result["pruning_mode"] = pruning_mode or "gather"
        result["keep_ratios"] = list(model.pruner.config.keep_ratios)
        result["kept_tokens"] = list(model.pruner.counts)
    if rankings:
        result.update(ranking_diagnostic(model, dataset, rankings, examples))
    return result


def main(argv):
    if len(argv) > 1:
        raise SpvitError(f"unexpected arguments {argv[1:]}; options are passed as --flag=value")
    if not flags.FLAGS.workdir:
        raise SpvitError("--workdir is required: the --workdir of a python -m spvit_tf.train run")
    if flags.FLAGS.output:  # before the model and the data load
        from spvit_tf.workdir import check_output_file

        check_output_file(flags.FLAGS.output, "--output")
    result = evaluate_workdir(flags.FLAGS.workdir, flags.FLAGS.data, flags.FLAGS.eval_examples,
                              pruning_mode=flags.FLAGS.pruning_mode,
                              rankings=flags.FLAGS.rankings)
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
    flags.DEFINE_list("rankings", [], "Ranking diagnostic: evaluate with these token rankings "
                      "(own, random, inverted, centre, evit) and report the keep-score spread.")
    flags.DEFINE_string("output", None, "Also write the result JSON here.")
    app.run(run_cli(main), flags_parser=parse_flags)
