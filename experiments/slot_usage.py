"""How a trained model shares the image among its slots: a diagnosis for a model that does not split.

    .venv/bin/python experiments/slot_usage.py RUN STORE [--step N] [--items 8] [--observed 5]

Runs the model (eval mode, fp32) on the first ``--items`` items of STORE (images, or scenes for
MulMON, cut to the model's ``num_views`` with ``--observed`` of them observed) and prints, with
slots ordered by their mean mask share:

- each slot's mean share of the mixing masks (1/K each when every slot is everywhere);
- each slot's KL(q(z_k | x) || N(0, I)) in nats (about 0: the slot carries nothing; the KL to a
  standard normal, also for GENESIS, whose prior is autoregressive);
- the mean per-pixel largest mask and the share of pixels where one slot holds more than half
  (1 and 1 for a clean split, 1/K and 0 when all slots blend evenly);
- the mean cosine between the K slots' appearance images, each centred over its pixels (near 1:
  the slots draw the same picture, the duplicates LDS is meant to suppress);
- the reconstruction's MSE against the MSE of one average image (the items' mean, per view):
  close together when the model draws the average scene.

The evaluation metrics (``ldsrig eval``) count *active* slots by a threshold on each slot's own
mask; a model whose soft masks are spread evenly has few active slots by that rule although
every slot is in use, which is what these numbers tell apart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from common.errors import UserError  # noqa: E402


def slot_usage(out, images: torch.Tensor) -> dict:
    """The numbers above from a ModelOutput (rows = images or views) and its (rows, 3, H, W)
    target images (the average image's MSE is the caller's: it depends on the grouping)."""
    from lds.models.base import gaussian_kl_standard_normal

    masks = out.masks.squeeze(2).float()                                 # (rows, K, H, W)
    share = masks.mean((-1, -2)).mean(0)                                 # (K,)
    order = share.argsort(descending=True)
    kl = gaussian_kl_standard_normal(out.posterior_mean.float(),
                                     out.posterior_logvar.float()).sum(-1).mean(0)   # (K,)
    largest = masks.max(1).values
    appearance = out.appearance.float().flatten(2)                       # (rows, K, 3HW)
    centred = appearance - appearance.mean(-1, keepdim=True)
    unit = centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    cosine = torch.einsum("rkd,rjd->rkj", unit, unit)
    k = cosine.shape[-1]
    off_diagonal = cosine[:, ~torch.eye(k, dtype=torch.bool)]
    return {
        "slot_order": order.tolist(),
        "mask_share": [float(share[i]) for i in order],
        "kl_nats": [float(kl[i]) for i in order],
        "largest_mask_mean": float(largest.mean()),
        "pixels_with_a_majority_slot": float((largest > 0.5).float().mean()),
        "appearance_cosine": float(off_diagonal.mean()) if k > 1 else float("nan"),
        "mse": float((out.reconstruction.float() - images).pow(2).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a training run directory")
    parser.add_argument("store", help="a store of the run's image size (held-out scenes)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--items", type=int, default=8, help="images, or scenes for MulMON")
    parser.add_argument("--observed", type=int, default=5, help="MulMON: views observed")
    args = parser.parse_args()

    from lds.data import open_eval_dataset
    from lds.training.runs import load_run

    torch.set_num_threads(1)
    if not Path(args.run).is_dir():
        raise UserError(f"run {args.run} is not a directory")
    model, cfg = load_run(args.run, step=args.step)
    dataset = open_eval_dataset(args.store, cfg.model)
    if len(dataset) < args.items:
        raise UserError(f"{args.store} holds {len(dataset)} items, fewer than --items {args.items}")
    items = [dataset[i] for i in range(args.items)]
    batch = {key: torch.stack([item[key] for item in items]) for key in model.input_keys}
    options = {}
    if "viewpoint" in batch:                                             # scenes x views
        views = cfg.model.num_views
        batch = {key: value[:, :views] for key, value in batch.items()}
        # at least one query view where there are two or more; the one view where there is one
        options["num_observed"] = max(1, min(args.observed, views - 1))
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(batch, **options)
    images = batch["image"].reshape(-1, *batch["image"].shape[-3:])
    numbers = slot_usage(out, images)
    grouped = batch["image"]                                             # items [x views]
    mean_image_mse = float((grouped.mean(0, keepdim=True) - grouped).pow(2).mean())
    print(f"{args.run} at step {model.checkpoint_step}, {args.items} items of {args.store}"
          + (f", {options['num_observed']} of {batch['image'].shape[1]} views observed"
             if options else ""))
    print("slots by mask share:      ", numbers["slot_order"])
    print("mask share per slot:      ", [round(v, 3) for v in numbers["mask_share"]])
    print("KL to N(0, I) per slot:   ", [round(v, 1) for v in numbers["kl_nats"]], "nats")
    print(f"largest mask per pixel:    {numbers['largest_mask_mean']:.3f} on average; one slot "
          f"holds > 0.5 of {numbers['pixels_with_a_majority_slot']:.1%} of the pixels")
    print(f"slot appearance cosine:    {numbers['appearance_cosine']:.3f} (centred, mean over pairs)")
    print(f"reconstruction MSE:        {numbers['mse']:.4f}; the average image's: {mean_image_mse:.4f}")


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        sys.exit(f"error: {error}")
