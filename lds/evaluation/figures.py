"""The paper's Figure 2 layout as a PNG: Obs | Rec | component 1..K alone | Seg, one row per image.

Rendering follows the supplement (section B):
* Rec, the whole scene, uses the softmax mixing probabilities: sum_k softmax_k(m^lg) * x_k
  (the model's ``reconstruction``);
* each component alone uses the sigmoid of its own mask logit: sigmoid(m^lg_k) * x_k (GENESIS,
  whose stick-breaking masks have no logit of a component's own: pi_k * x_k), composited
  over a plain background, white by default (``background="black"`` for dark scenes), so an
  empty slot is a blank tile and a duplicate shows as two tiles drawing the same object;
* Seg is the argmax of the mixing probabilities, coloured with a fixed palette (slot k always
  gets colour k, so colours are comparable between rows of one run, not between runs).

    figure2(output, images, "fig.png")                                 # one run
    figure2({"MONet0": control_model, "MONet+": lds_model}, images, "fig.png")   # stacked
    figure2(mulmon_model, {"image": (S, V, 3, H, W), "viewpoint": (S, V, v)}, "fig.png")

Multi-view models (MulMON) take a batch of scenes instead of an image tensor: every view of
every scene is a row, observed views first and then the query views the model predicted from
the final posterior, each row labelled as such. MulMON's RGB means are unbounded; every image
tile is clamped to [0, 1] for display, and the figure says so when anything was clamped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import torch
from torch import nn

from lds.contract import ModelOutput

# Fixed segmentation palette (Okabe-Ito and tab10-like colours), indexed by slot.
PALETTE = np.array([
    [0.35, 0.35, 0.35], [0.90, 0.62, 0.00], [0.34, 0.71, 0.91], [0.00, 0.62, 0.45],
    [0.94, 0.89, 0.26], [0.00, 0.45, 0.70], [0.84, 0.37, 0.00], [0.80, 0.47, 0.65],
    [0.55, 0.34, 0.29], [0.74, 0.74, 0.13], [0.09, 0.75, 0.81], [1.00, 0.50, 0.50],
])

Source = Union[ModelOutput, nn.Module, str, Path]


def render_components_alone(output: ModelOutput, background: str = "white") -> torch.Tensor:
    """Each component rendered alone: sigmoid(mask_logit_k) * x_k over the background colour
    (pi_k * x_k where the masks are a partition with no mask of a component's own: GENESIS).

    Returns (B, K, 3, H, W) in [0, 1]. Appearance is clipped to [0, 1] (MulMON's is unbounded).
    """
    if background not in ("white", "black"):
        raise ValueError(f"background must be 'white' or 'black', got {background!r}")
    alpha = (output.masks if output.masks_partition else torch.sigmoid(output.mask_logits))
    alpha = alpha.detach().float().cpu()
    appearance = output.appearance.detach().float().cpu().clamp(0.0, 1.0)
    base = 1.0 if background == "white" else 0.0
    return alpha * appearance + (1.0 - alpha) * base


def segmentation_rgb(masks: torch.Tensor) -> np.ndarray:
    """Argmax label map of (B, K, 1, H, W) masks coloured with the fixed palette -> (B, H, W, 3)."""
    labels = masks.detach().cpu()[:, :, 0].argmax(dim=1).numpy()
    return PALETTE[labels % len(PALETTE)]


def _as_output(source: Source, batch: dict) -> ModelOutput:
    if isinstance(source, ModelOutput):
        return source
    if isinstance(source, (str, Path)):
        from lds.training.runs import load_run  # only needed when a run directory is given

        source, _ = load_run(source, map_location="cpu")
    if isinstance(source, nn.Module):
        device = next(source.parameters(), torch.empty(0)).device
        keys = source.input_keys
        missing = [key for key in keys if key not in batch]
        if missing:
            raise ValueError(f"{type(source).__name__} needs batch keys {missing} for Figure 2 "
                             "(pass a dict batch of scenes for multi-view models)")
        was_training = source.training
        source.eval()
        with torch.no_grad():
            output = source({key: batch[key].to(device) for key in keys})
        source.train(was_training)
        return output
    raise TypeError(f"figure2 needs ModelOutputs, models or run directories, got {type(source)}")


def _to_hwc(image: torch.Tensor) -> np.ndarray:
    return image.detach().float().cpu().clamp(0.0, 1.0).permute(1, 2, 0).numpy()


def _outside_unit_range(t: torch.Tensor) -> bool:
    t = t.detach()
    return bool((t < 0).any() or (t > 1).any())


def _view_labels(output: ModelOutput, views_per_scene: int) -> list[str]:
    """Row labels for multi-view outputs: scene number and observed / query view number."""
    query = output.query_rows
    if query is None:
        return [""] * output.masks.shape[0]
    labels, seen, asked = [], 0, 0
    for row, is_query in enumerate(query.tolist()):
        if row % views_per_scene == 0:
            seen = asked = 0
        scene = row // views_per_scene + 1
        if is_query:
            asked += 1
            labels.append(f"scene {scene}\nquery {asked}")
        else:
            seen += 1
            labels.append(f"scene {scene}\nobserved {seen}")
    return labels


def figure2(outputs_or_runs: Source | Sequence[Source] | Mapping[str, Source],
            images: torch.Tensor | Mapping[str, torch.Tensor], path: str | Path,
            background: str = "white", tile_inches: float = 1.1, dpi: int = 100) -> Path:
    """Write the Figure 2 layout for ``images`` (N, 3, H, W) in [0, 1] to ``path`` (PNG).

    ``outputs_or_runs``: one source, a list of sources (stacked in order, e.g. control first),
    or a mapping row label -> source (e.g. {"MONet0": ..., "MONet+": ...}). A source is a
    ModelOutput computed on ``images``, a model (run on ``images`` in eval mode), or a run
    directory (loaded with lds.training.runs.load_run). Returns the path written.

    ``images`` may instead be a batch dict; for multi-view models (MulMON) a batch of scenes,
    "image" (S, V, 3, H, W) and "viewpoint" (S, V, v): the rows are then the S x V views
    (observed first, then queries, as the model orders them), labelled per row.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(outputs_or_runs, Mapping):
        named = list(outputs_or_runs.items())
    elif isinstance(outputs_or_runs, (list, tuple)):
        named = [(f"run {i + 1}" if len(outputs_or_runs) > 1 else "", s)
                 for i, s in enumerate(outputs_or_runs)]
    else:
        named = [("", outputs_or_runs)]
    batch = dict(images) if isinstance(images, Mapping) else {"image": images}
    images = batch["image"]
    views_per_scene = 1
    if images.dim() == 5 and images.shape[2] == 3:        # scenes x views: one row per view
        views_per_scene = images.shape[1]
        images = images.flatten(0, 1)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W) or (S, V, 3, H, W), got {tuple(images.shape)}")
    outputs = [(label, _as_output(source, batch)) for label, source in named]
    num_images = images.shape[0]
    for label, output in outputs:
        if output.masks.shape[0] != num_images:
            raise ValueError(f"output {label!r} has {output.masks.shape[0]} images, "
                             f"expected {num_images}")
    num_slots = max(o.masks.shape[1] for _, o in outputs)
    num_cols = num_slots + 3
    num_rows = num_images * len(outputs)

    fig, axes = plt.subplots(num_rows, num_cols, squeeze=False,
                             figsize=(tile_inches * num_cols, tile_inches * num_rows))
    titles = ["Obs", "Rec"] + [str(k + 1) for k in range(num_slots)] + ["Seg"]
    for block, (label, output) in enumerate(outputs):
        alone = render_components_alone(output, background)
        seg = segmentation_rgb(output.segmentation_masks)
        view_labels = _view_labels(output, views_per_scene)
        for i in range(num_images):
            row = axes[block * num_images + i]
            tiles = [_to_hwc(images[i]), _to_hwc(output.reconstruction[i])]
            tiles += [_to_hwc(alone[i, k]) for k in range(alone.shape[1])]
            tiles += [None] * (num_slots - alone.shape[1]) + [seg[i]]
            for col, (ax, tile) in enumerate(zip(row, tiles)):
                ax.set_xticks([])
                ax.set_yticks([])
                if tile is None:
                    ax.axis("off")
                else:
                    ax.imshow(tile, interpolation="nearest")
                if block * num_images + i == 0:        # column titles once, on top
                    ax.set_title(titles[col], fontsize=9)
            if view_labels[i]:
                row[0].set_ylabel(f"{label}\n{view_labels[i]}" if label else view_labels[i],
                                  fontsize=7)
            elif label:
                row[0].set_ylabel(f"{label}\n#{i}", fontsize=8)
    # Unbounded RGB (MulMON's means) is clamped for display, and a Seg column that is not the
    # decoded masks' argmax (MONet: its attention masks) is named: say both under the grid.
    notes = []
    if any(_outside_unit_range(o.appearance) or _outside_unit_range(o.reconstruction)
           for _, o in outputs):
        notes.append("RGB outside [0, 1] (unbounded appearance) is clamped to [0, 1] for display")
    sources = sorted({o.segmentation_source for _, o in outputs} - {"decoded masks"})
    if sources:
        notes.append(f"Seg: argmax of the {', '.join(sources)} (the model's own segmentation); "
                     "slot columns: each component rendered alone")
    left = 0.09 if views_per_scene > 1 else 0.06 if any(l for l, _ in outputs) else 0.01
    margin = 0.25 * len(notes) / num_rows
    fig.subplots_adjust(left=left, right=0.99, top=1 - 0.25 / num_rows,
                        bottom=margin if notes else 0.01, wspace=0.04, hspace=0.04)
    for n, note in enumerate(notes):
        fig.text(0.5, (0.05 + 0.25 * n) / num_rows, note, ha="center", va="bottom", fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def figure2_for_dataset(models: list, dataset, num_examples: int, path: Path, limit: int | None = None,
                 labels: list[str] | None = None) -> Path:
    """Figure 2 for ``num_examples`` images spread evenly over the first ``limit`` images.

    For multi-view models (MulMON) the dataset items are scenes: ``num_examples`` scenes are
    drawn, each as one row per view (observed views, then query views).
    """
    available = len(dataset) if limit is None else min(limit, len(dataset))
    chosen = np.unique(np.linspace(0, available - 1, num=min(num_examples, available)).round())
    items = [dataset[int(i)] for i in chosen]
    images = torch.stack([item["image"] for item in items])
    if any(m.item_kind == "scenes" for m in models):              # scenes x views
        keys = {key for m in models for key in m.input_keys}
        images = {key: torch.stack([item[key] for item in items]) for key in keys}
    sources = dict(zip(labels, models)) if labels and len(models) > 1 else models[0]
    return figure2(sources, images, path)
