"""`PruningConfig`: where to prune, how much, and with which method."""

import dataclasses

from spvit_tf.errors import SpvitError
from spvit_tf.pruning.methods import get_method

SELECTIONS = ("gather", "matmul")


@dataclasses.dataclass(frozen=True)
class PruningConfig:
    """Token pruning schedule shared by every method, so results compare like for like.

    - `method`: the name of a registered method (`spvit_tf.pruning.methods`, one file each):
      `spvit` (learned multi-head selector + package token), `hard` (same selector, dropped
      tokens discarded, as DynamicViT), `evit` (no parameters: class-token attention top-k +
      an attention-weighted fused token, as EViT), `static` (no selector: a fixed centre
      subset, the floor a learned method must beat), `tome` (no parameters: similar tokens
      merged by bipartite soft matching, as ToMe). `method_object` is the registered object.
    - `locations`: global block indices a selector sits before (for PiT, indices into the flat
      block list across stages).
    - `keep_ratios`: cumulative fraction of the original patch tokens kept from each location
      on (for PiT, of the patch tokens of the location's stage); non-increasing within a
      stage. At inference each becomes a fixed count `k = round(ratio * tokens)`
      (`spvit_tf.geometry.kept_tokens`; `TokenSchedule` holds every location's count).
    - `selection`: `gather` (TOPK_V2 + GATHER) or `matmul` (rank comparisons and one-hot
      matmuls: no TOPK_V2/GATHER ops, for the TFLite GPU delegate). Both give the same output.
    - `shared_head_mlps`: the selector's per-head MLPs share weights (the official code does,
      by accident of list construction) instead of having one set per head.
    - `gumbel_tau`: Gumbel-softmax temperature of the training decisions.
    """

    method: str = "spvit"
    locations: tuple = (3, 6, 9)
    keep_ratios: tuple = (0.7, 0.49, 0.343)
    selection: str = "gather"
    shared_head_mlps: bool = False
    gumbel_tau: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "locations", tuple(int(i) for i in self.locations))
        object.__setattr__(self, "keep_ratios", tuple(float(r) for r in self.keep_ratios))
        get_method(self.method)  # an unknown name is a SpvitError naming the known ones
        if self.selection not in SELECTIONS:
            raise SpvitError(f"unknown selection {self.selection!r}; choose one of {SELECTIONS}")
        if len(self.locations) != len(self.keep_ratios):
            raise SpvitError(
                f"{len(self.locations)} pruning locations but {len(self.keep_ratios)} keep "
                "ratios: give one keep ratio per location"
            )
        if not self.locations:
            raise SpvitError("pruning needs at least one location")
        if list(self.locations) != sorted(set(self.locations)):
            raise SpvitError(f"pruning locations {self.locations} must be strictly increasing")
        if not all(0.0 < r <= 1.0 for r in self.keep_ratios):
            raise SpvitError(f"keep ratios {self.keep_ratios} must lie in (0, 1]")
        if self.gumbel_tau <= 0:
            raise SpvitError(f"gumbel_tau must be positive, got {self.gumbel_tau}")

    @classmethod
    def from_any(cls, pruning):
        """Accepts a `PruningConfig`, a dict with the same keys, or None."""
        if pruning is None or isinstance(pruning, cls):
            return pruning
        if not isinstance(pruning, dict):
            raise SpvitError(f"pruning must be a PruningConfig or dict, got {type(pruning).__name__}")
        unknown = set(pruning) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SpvitError(
                f"unknown pruning option(s) {sorted(unknown)}; valid: "
                f"{[f.name for f in dataclasses.fields(cls)]}"
            )
        return cls(**pruning)

    def to_dict(self):
        return dataclasses.asdict(self)

    @property
    def method_object(self):
        """The registered method object named by `method`."""
        return get_method(self.method)

    @property
    def learned(self):
        """Whether the method has a trainable selector (trained with Gumbel decisions)."""
        return self.method_object.learned

    @property
    def has_package(self):
        """Whether dropped tokens are fused into an extra token instead of discarded."""
        return self.method_object.has_package


def pruning_from_flags(method, locations, keep_ratios, selection="gather"):
    """A pruning dict from the CLIs' flags (`--pruning_locations=3,6,9` etc.)."""
    try:
        locations = [int(v) for v in locations]
        keep_ratios = [float(v) for v in keep_ratios]
    except ValueError:
        raise SpvitError(
            "--pruning_locations takes comma-separated block indices and --keep_ratios "
            "comma-separated fractions, e.g. --pruning_locations=3,6,9 --keep_ratios=0.7,0.49,0.343"
        ) from None
    return PruningConfig(method, tuple(locations), tuple(keep_ratios), selection).to_dict()
