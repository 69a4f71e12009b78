"""The one table of metrics: name, label, format, direction, and whether it needs ground truth.

Evaluation tables, comparisons, study reports and the demo read this table, so a new metric is
one entry here (plus the function that computes it in :mod:`lds.evaluation.metrics.batch`).

Segmentation sources.  A model segments with its own masks (``ModelOutput.segmentation_masks``:
MONet's attention masks, the decoded mixing masks for the other models).  When those are not the
decoded masks, the metrics that depend on the segmentation (:data:`SEGMENTATION_METRICS`) are
also computed on the decoded masks and stored as ``decoded_<name>``, so both sources stand side
by side in eval.json and in every table, each labelled (docs/evaluation.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    fmt: str = "{:.4f}"
    scale: float = 1.0                     # 100: a 0/1 rate shown as a percentage
    higher_is_better: bool | None = None   # None: no direction (a count that describes)
    needs_gt: bool = False
    short: str | None = None               # column header in the study tables

    def format(self, value: float) -> str:
        return self.fmt.format(value * self.scale)

    @property
    def short_label(self) -> str:
        return self.short or self.label


_TABLE = (
    Metric("mse", "MSE", "{:.5f}", higher_is_better=False),
    Metric("rmse", "RMSE (MulMON)", higher_is_better=False),
    Metric("miou", "mIoU (Hungarian)", higher_is_better=True, needs_gt=True, short="mIoU"),
    Metric("miou_greedy", "mIoU (MulMON greedy)", higher_is_better=True, needs_gt=True,
           short="mIoU (greedy)"),
    Metric("ari", "ARI", higher_is_better=True, needs_gt=True),
    Metric("fg_ari", "FG-ARI", higher_is_better=True, needs_gt=True),
    # the objects drawn inside the background's slot, as one flat layer (supplement C.2)
    Metric("fg_in_bg_slot", "object pixels in the background's slot (%)", "{:.1f}", 100.0, False,
           needs_gt=True, short="objects in bg slot (%)"),
    Metric("sim", "Sim (mean pairwise cos)", higher_is_better=False, short="Sim"),
    Metric("active_slots", "active slots", "{:.2f}"),
    # GT-free: near 100% when one slot takes the whole image (GENESIS on CLE-MV in the
    # supplement's C.2, "one big flat object"); near 1/K when the slots share it evenly.
    Metric("largest_segment", "largest slot's share of the image (%)", "{:.1f}", 100.0,
           short="largest slot (%)"),
    Metric("dup_pairs", "duplicate pairs / image (no GT)", "{:.3f}", higher_is_better=False,
           short="dup. pairs"),
    Metric("dup_nogt", "images with duplicates, no GT (%)", "{:.1f}", 100.0, False,
           short="dup. no-GT (%)"),
    Metric("dup_components", "duplicated GT components / image", "{:.3f}", higher_is_better=False,
           needs_gt=True, short="dup. comps"),
    Metric("dup_gt", "images with duplicates, GT (%)", "{:.1f}", 100.0, False, needs_gt=True,
           short="dup. GT (%)"),
    Metric("dup_bg", "images with a duplicated background / table (%)", "{:.1f}", 100.0, False,
           needs_gt=True, short="dup. table (%)"),
)

# The metrics whose value depends on which masks segment (the rest use latents or the
# reconstruction only).
SEGMENTATION_METRICS = ("miou", "miou_greedy", "ari", "fg_ari", "fg_in_bg_slot", "active_slots",
                        "largest_segment", "dup_pairs", "dup_nogt", "dup_components", "dup_gt",
                        "dup_bg")
DECODED_PREFIX = "decoded_"
DECODED_LABEL = "decoded masks"
QUERY_PREFIX = "query_"  # multi-view models: metrics of the query (unobserved) views

METRICS: dict[str, Metric] = {m.name: m for m in _TABLE}
for _name in SEGMENTATION_METRICS:
    _m = METRICS[_name]
    METRICS[DECODED_PREFIX + _name] = Metric(
        DECODED_PREFIX + _name, f"{_m.label}, {DECODED_LABEL}", _m.fmt, _m.scale,
        _m.higher_is_better, _m.needs_gt, f"{_m.short_label} (decoded)")

METRICS_WITHOUT_GT = tuple(n for n, m in METRICS.items() if not m.needs_gt)
METRICS_WITH_GT = tuple(n for n, m in METRICS.items() if m.needs_gt)


def metric(name: str, segmentation_source: str | None = None) -> Metric:
    """The table entry of ``name``; ``query_<name>`` is <name> on the query views.  With
    ``segmentation_source`` given (a result that has decoded_ companions), the label of a
    segmentation metric names its source, so both sources are labelled."""
    base = name.removeprefix(QUERY_PREFIX)
    entry = METRICS.get(base) or Metric(base, base)
    label, short = entry.label, entry.short_label
    if segmentation_source and base in SEGMENTATION_METRICS:
        label, short = f"{label}, {segmentation_source}", f"{short} ({segmentation_source.split()[0]})"
    if name != base:
        label, short = f"{label}, query views", f"{short} (query)"
    return Metric(name, label, entry.fmt, entry.scale, entry.higher_is_better, entry.needs_gt, short)


def segmentation_source_of(meta: dict) -> str | None:
    """The label of a result's own segmentation source when decoded_ companions exist."""
    sources = meta.get("segmentation_sources") or {}
    return sources.get("") if DECODED_PREFIX in sources else None
