"""Several token budgets in one `.tflite`: one signature per keep-ratio set, weights shared.

A token-pruned model's weights do not depend on its keep ratios (the selectors score every
token; the ratios only say how many of the best the top-k keeps), so one trained model taken
at several k serves several budgets. One file holds them as signatures, and an app switches
budget at run time (battery saver, thermal throttling) by calling another signature of the
file it already loaded. Each signature's graph is a `convert.retarget` twin of the model with
other keep ratios; `convert.convert_signatures` writes them with one copy of the weights.

A budget on the command line (`export --budgets`) is either one ratio rho, which keeps rho,
rho^2, rho^3... of the patch tokens at the model's pruning locations (SPViT's geometric
schedule), or one keep ratio per location joined by ':'. Its signature key is "keep_" and the
entry with ':' as '_' (keep_0.63, keep_0.7_0.5). The converter orders the subgraphs by
signature key; subgraph 0 is what a runtime that asks for no signature runs, so the file's
card and metadata describe that one at their top level and name it.
"""

from spvit_tf.errors import SpvitError
from spvit_tf.pruning.config import PruningConfig

PREFIX = "keep_"


def _ratio(text, entry):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise SpvitError(f"--budgets entry {entry!r}: {text!r} is not a keep ratio in (0, 1]")
    return value


def parse_budgets(entries, pruning):
    """{signature key: keep ratios per location} of the `--budgets` entries for a model with
    pruning config `pruning` (a dict), in the given order; one clear error for a bad entry."""
    if not pruning:
        raise SpvitError("--budgets needs a token-pruned model: a dense model has one budget")
    locations = list(pruning["locations"])
    budgets = {}
    for entry in entries:
        entry = entry.strip()
        parts = entry.split(":")
        if len(parts) == 1:
            rho = _ratio(parts[0], entry)
            ratios = tuple(round(rho ** (j + 1), 6) for j in range(len(locations)))
        elif len(parts) == len(locations):
            ratios = tuple(_ratio(part, entry) for part in parts)
        else:
            raise SpvitError(f"--budgets entry {entry!r} has {len(parts)} keep ratios for "
                             f"{len(locations)} pruning locations {locations}; pass one ratio "
                             "(rho, rho^2, ...) or one per location joined by ':'")
        if any(later > earlier for earlier, later in zip(ratios, ratios[1:])):
            raise SpvitError(f"--budgets entry {entry!r}: keep ratios {list(ratios)} must not "
                             "increase from one location to the next")
        PruningConfig.from_any({**pruning, "keep_ratios": ratios})  # the model's own checks
        key = PREFIX + entry.replace(":", "_")
        if key in budgets:
            raise SpvitError(f"--budgets lists {entry!r} twice")
        budgets[key] = ratios
    if len(budgets) < 2:
        raise SpvitError("--budgets needs at least two budgets (one file, several signatures)")
    return budgets
