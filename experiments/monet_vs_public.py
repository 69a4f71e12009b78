"""Does our MONet decompose at least as well as a public MONet on the same data? Train both.

The public model is the MONet of applied-ai-lab/genesis (Engelcke et al.; models/monet_config.py
with its own U-Net, component VAE and loss), read from --public-src: a checkout of that
repository that this script never copies. Its missing or Python-3.11-broken dependencies are
stood in for at import time (``forge.flags`` records the flag defaults the modules declare,
``attrdict`` becomes a dict with attribute access, and ``tensorflow``, ``sklearn``,
``simplejson`` and ``forge.experiment_tools``, imported by utils/misc.py for functions the
model does not call, are empty modules); none of its code is changed.

Both models see the same batches in the same order (the training loop's step sampler, seeded
by --seed), with the same settings: RMSprop, lr, gradient-norm clip, batch, K, 32x32 or 64x64.
Theirs is trained with the loss of its train.py without GECO (err + beta (kl_l + kl_m), beta
0.5: Burgess et al.'s settings, as its README gives them), its pixel stds set to MONet's
0.09 / 0.11. Every --eval-every steps both are evaluated on the held-out store by the same code
(lds.evaluation.evaluate): MSE, mIoU, ARI and FG-ARI on the attention masks (what MONet
segments with) and on the decoded masks.

    .venv/bin/python experiments/monet_vs_public.py --public-src /tmp/genesis \\
        --train train32.zarr --val val32.zarr --out out/cmp --steps 4000 --only theirs --seed 0
    .venv/bin/python experiments/monet_vs_public.py --out out/cmp --plot   # curves of all runs
    .venv/bin/python experiments/monet_vs_public.py --public-src /tmp/genesis --speed  # step times
    .venv/bin/python experiments/monet_vs_public.py --public-src /tmp/genesis --out out/cmp \
        --score-saved test32.zarr          # the trained public weights on the test scenes

Ours can also come from ``ldsrig train`` runs with validation (``--ours-run RUN_DIR``, their
validation.jsonl), so a study's control runs need not be trained twice. Writes
``OUT/<who>_seed<S>.jsonl`` (one row per evaluation: step, seconds, images/s, metrics) and,
with --plot, ``OUT/curves.png`` and ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from genesis_checkout import AttrDict, import_from_checkout  # noqa: E402  (experiments/)
from lds.contract import ModelOutput  # noqa: E402
from seed_curves import common_steps, read_rows, values_at  # noqa: E402  (experiments/)

CURVE_METRICS = ("fg_ari", "miou", "mse", "decoded_fg_ari", "mse_attention")


# ---- the public MONet, imported from its own checkout ------------------------------------------

def public_monet(src: Path, size: int, slots: int, std_bg: float, std_fg: float):
    """(their MONet module, its config): their flag defaults, with image size, K and stds set."""
    (public_monet_class,), defaults = import_from_checkout(src, [("models.monet_config", "MONet")])
    cfg = AttrDict(defaults)
    cfg.update(img_size=size, K_steps=slots, pixel_std1=std_bg, pixel_std2=std_fg, debug=False)
    return public_monet_class(cfg), cfg


class PublicAdapter(torch.nn.Module):
    """Their forward as our output contract, so one evaluation scores both models."""

    input_keys = ("image",)

    def __init__(self, model, beta: float):
        super().__init__()
        self.model, self.beta = model, beta
        self.num_slots = model.K_steps

    def loss(self, image: torch.Tensor) -> torch.Tensor:
        # train.py without GECO: err + beta * (kl_l + kl_m), each averaged over the batch
        _, losses, *_ = self.model(image)
        kl_l = torch.stack(losses.kl_l_k, dim=1).mean(dim=0).sum()
        return losses.err.mean(0) + self.beta * (kl_l + losses.kl_m.mean(0))

    def forward(self, batch: dict) -> ModelOutput:
        recon, losses, stats, _, comp_stats = self.model(batch["image"])
        stack = lambda items: torch.stack(list(items), dim=1)           # noqa: E731
        attention = stack(stats.log_m_k).exp()                          # (B, K, 1, H, W)
        log_decoded = stack(stats.log_m_r_k)
        mean = stack(comp_stats.mu_k)
        appearance = stack(stats.x_r_k)
        zero = recon.new_zeros(())
        # Their `recon` mixes the appearances with the attention masks; the output contract's
        # reconstruction (and so the MSE column) mixes them with the decoded masks, as ours does
        # (the paper's rendering). The attention-mask mixture is scored as mse_attention for both.
        return ModelOutput(zero, {"loss": zero}, stack(comp_stats.z_k), mean,
                           2 * stack(comp_stats.sigma_k).log(), log_decoded, log_decoded.exp(),
                           appearance, (log_decoded.exp() * appearance).sum(dim=1),
                           segmentation_masks=attention, segmentation_source="attention masks")


@torch.no_grad()
def attention_mse(model, dataset, count: int, batch_size: int = 48) -> float:
    """Mean squared error of sum_k m_k x_k with the attention masks m_k (what MONet's likelihood
    mixes with; the contract's reconstruction uses the decoded masks)."""
    model.eval()
    total, seen = 0.0, 0
    for start in range(0, count, batch_size):
        image = torch.stack([dataset[i]["image"] for i in range(start, min(count, start + batch_size))])
        out = model({"image": image})
        mixed = (out.segmentation_masks * out.appearance).sum(dim=1)
        total += float(((mixed - image) ** 2).mean(dim=(1, 2, 3)).sum())
        seen += image.shape[0]
    return total / seen


# ---- training both the same way ------------------------------------------------------------------

def train_one(who: str, args, out: Path) -> Path:
    from datasets.torch_data import ImageDataset
    from lds.evaluation import evaluate
    from lds.training.config import load_train_config
    from lds.training.loop import StepBatchSampler, keep_freed_memory
    from lds.models import build_model

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    torch.manual_seed(args.seed)
    train_set, val_set = ImageDataset(args.train), ImageDataset(args.val)
    size = train_set[0]["image"].shape[-1]
    if who == "ours":
        cfg = load_train_config("monet", None, [f"model.height={size}", f"model.width={size}",
                                                f"model.num_slots={args.slots}"])
        model = build_model("monet", cfg.model)
        loss_of = lambda image: model({"image": image}).loss            # noqa: E731
        evaluated = model
    else:
        public, _ = public_monet(Path(args.public_src), size, args.slots, 0.09, 0.11)
        evaluated = PublicAdapter(public, beta=0.5)
        model = evaluated
        loss_of = evaluated.loss
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.RMSprop(params, lr=args.lr)
    sampler = StepBatchSampler(len(train_set), args.batch, args.seed, 0, args.steps)
    path = out / f"{who}_seed{args.seed}.jsonl"
    path.unlink(missing_ok=True)
    trained_seconds = 0.0

    def record(step: int) -> None:
        with torch.random.fork_rng():
            result = evaluate(evaluated, val_set, batch_size=48, max_images=args.val_images,
                              progress=False)
        model.train()
        row = {"step": step, "train_seconds": round(trained_seconds, 2),
               "images_per_s": step * args.batch / trained_seconds if trained_seconds else None}
        row.update({k: v["mean"] for k, v in result.aggregates.items()})
        with torch.random.fork_rng():
            row["mse_attention"] = attention_mse(evaluated, val_set, min(args.val_images, len(val_set)))
        model.train()
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{who} seed {args.seed} step {step}: " +
              ", ".join(f"{k} {row[k]:.4f}" for k in CURVE_METRICS if row.get(k) is not None), flush=True)

    record(0)
    model.train()
    for step, indices in enumerate(sampler, start=1):
        image = torch.stack([train_set[i]["image"] for i in indices])
        torch.manual_seed(args.seed * 1_000_003 + step)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(image)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, args.clip)
        optimizer.step()
        trained_seconds += time.perf_counter() - started
        if step % args.eval_every == 0 or step == args.steps:
            record(step)
    from safetensors.torch import save_file     # the trained weights, to evaluate them again later
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(out / f"{who}_seed{args.seed}_step{args.steps}.safetensors"))
    return path


def score_saved(args, out: Path, store: Path) -> None:
    """Evaluate each saved public model (OUT/theirs_seed<S>_step<N>.safetensors) on ``store``:
    OUT/theirs_seed<S>_step<N>_<store name>.json with every metric's mean and s.e."""
    from safetensors.torch import load_file

    from datasets.torch_data import ImageDataset
    from lds.evaluation import evaluate

    torch.set_num_threads(args.threads)
    dataset = ImageDataset(str(store))
    size = dataset[0]["image"].shape[-1]
    saved = sorted(out.glob("theirs_seed*_step*.safetensors"))
    if not saved:
        raise SystemExit(f"no saved public weights (theirs_seed*_step*.safetensors) in {out}")
    # Built once: its modules read their flag defaults on first import only.
    public, _ = public_monet(Path(args.public_src), size, args.slots, 0.09, 0.11)
    model = PublicAdapter(public, beta=0.5)
    for weights in saved:
        model.load_state_dict(load_file(str(weights)))
        result = evaluate(model.eval(), dataset, batch_size=48, max_images=args.val_images,
                          progress=False)
        row = {k: v for k, v in result.aggregates.items()}
        row["mse_attention"] = attention_mse(model, dataset, min(args.val_images, len(dataset)))
        path = out / f"{weights.stem}_{store.name.removesuffix('.zarr')}.json"
        path.write_text(json.dumps({"weights": weights.name, "store": str(store.resolve()),
                                    "aggregates": row}, indent=1))
        print(f"{weights.name} on {store.name}: " + ", ".join(
            f"{k} {row[k]['mean']:.4f}" for k in ("fg_ari", "miou", "mse", "decoded_fg_ari")),
            f"mse_attention {row['mse_attention']:.4f}")


# ---- speed, side by side ------------------------------------------------------------------------------

def speed(args) -> None:
    """Training steps of both models alternating in one process (same batch, same thread
    count), so the machine's load hits both alike: seconds per step and the ratio per pair,
    next to the fp32 matmul rate measured in the same run and each step's FLOPs."""
    import statistics

    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from flops import kernel_family, matmul_rate  # benchmarks/flops.py

    from lds.models import MONetConfig, build_model
    from lds.training.loop import keep_freed_memory

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    torch.manual_seed(0)
    size = args.size
    image = torch.rand(args.batch, 3, size, size)
    widths = {"decoder_channels": tuple(args.ours_decoder_channels)} if args.ours_decoder_channels else {}
    ours = build_model("monet", MONetConfig(height=size, width=size, num_slots=args.slots,
                                            **widths)).train()
    public, _ = public_monet(Path(args.public_src), size, args.slots, 0.09, 0.11)
    theirs = PublicAdapter(public, beta=0.5).train()
    steps = {}
    for name, model, loss_of in (("ours", ours, lambda x: ours({"image": x}).loss),
                                 ("theirs", theirs, theirs.loss)):
        optimizer = torch.optim.RMSprop(model.parameters(), lr=args.lr)

        def step(model=model, loss_of=loss_of, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            loss_of(image).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
        step()                                                   # warm-up
        with FlopCounterMode(display=False) as counter:
            step()
        steps[name] = (step, counter.get_total_flops())
    rate = matmul_rate()
    times = {"ours": [], "theirs": []}
    for _ in range(args.pairs):
        for name, (step, _) in steps.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    rate = max(rate, matmul_rate())
    print(f"MONet training step, {size}x{size}, K={args.slots}, batch {args.batch}, "
          f"our decoder {ours.cfg.decoder_channels}, "
          f"{args.threads} thread(s), torch {torch.__version__}, CPU kernels: {kernel_family()}")
    print(f"fp32 matmul rate: {rate / 1e9:.0f} GFLOP/s")
    for name, values in times.items():
        median = statistics.median(values)
        flops = steps[name][1]
        print(f"{name:6s} {median:6.3f} s/step  {args.batch / median:6.1f} images/s  "
              f"{flops / 1e9:6.1f} GFLOP/step  {flops / median / rate:5.1%} of the matmul rate")
    ratios = [t / o for o, t in zip(times["ours"], times["theirs"])]
    print("time(theirs) / time(ours) per pair: " + ", ".join(f"{r:.2f}" for r in ratios))


# ---- curves -------------------------------------------------------------------------------------------

def plot(out: Path, ours_runs: list[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    curves: dict[str, list[list[dict]]] = {"ours": [], "theirs": []}
    for path in sorted(out.glob("*_seed*.jsonl")):
        curves[path.name.split("_seed")[0]].append(read_rows(path))
    for run in ours_runs:                          # ldsrig train runs with validation
        curves["ours"].append(read_rows(Path(run) / "validation.jsonl"))
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4 * len(CURVE_METRICS), 3.2))
    summary = {}
    labels = {"ours": "ldsrig MONet", "theirs": "applied-ai-lab/genesis MONet"}
    for who, runs in curves.items():
        if not runs:
            continue
        steps = common_steps(runs)
        summary[who] = {"runs": len(runs), "steps": steps}
        for ax, name in zip(axes, CURVE_METRICS):
            # A metric a run did not record (mse_attention in older validation.jsonl) is NaN.
            values = values_at(runs, steps, name)
            if np.isnan(values).all():
                continue
            mean, std = values.mean(0), values.std(0)
            ax.plot(steps, mean, label=f"{labels[who]} ({len(runs)} seed{'s' if len(runs) != 1 else ''})")
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
            ax.set_title(name.replace("_", " "))
            ax.set_xlabel("step")
            summary[who][name] = {"mean": mean.tolist(), "std": std.tolist(),
                                  "final_per_seed": values[:, -1].tolist()}
        speeds = [rows[-1].get("images_per_s") for rows in runs if rows[-1].get("images_per_s")]
        summary[who]["images_per_s"] = speeds
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out / 'curves.png'} and {out / 'summary.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--public-src", help="checkout of applied-ai-lab/genesis")
    parser.add_argument("--train")
    parser.add_argument("--val")
    parser.add_argument("--out", default="")
    parser.add_argument("--only", choices=["ours", "theirs", "both"], default="both")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--val-images", type=int, default=240)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--slots", type=int, default=5)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--clip", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", action="store_true", help="only draw the curves of OUT")
    parser.add_argument("--speed", action="store_true",
                        help="only time both models' training steps side by side")
    parser.add_argument("--size", type=int, default=32, help="--speed: image side")
    parser.add_argument("--pairs", type=int, default=5, help="--speed: timed step pairs")
    parser.add_argument("--ours-decoder-channels", type=int, nargs="+", metavar="C",
                        help="--speed: our component decoder's widths (MONet's paper: 32 32 64 "
                             "64; genesis' MONet: 32 32 32 32, for a like-for-like step)")
    parser.add_argument("--ours-run", nargs="*", default=[],
                        help="ldsrig train run dirs (with validation) to plot as ours")
    parser.add_argument("--score-saved", metavar="STORE",
                        help="only evaluate the public weights saved in OUT on STORE (the test "
                             "scenes), with the same evaluation as `ldsrig eval`")
    args = parser.parse_args()
    if args.score_saved:
        if not (args.out and args.public_src):
            parser.error("--score-saved needs --out and --public-src")
        score_saved(args, Path(args.out), Path(args.score_saved))
        return
    if args.speed:
        if not args.public_src:
            parser.error("--speed needs --public-src")
        speed(args)
        return
    if not args.out:
        parser.error("--out is needed")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.plot:
        if not (args.train and args.val):
            parser.error("--train and --val are needed to train")
        if args.only in ("theirs", "both") and not args.public_src:
            parser.error("--public-src is needed to train the public MONet")
        for who in (["ours", "theirs"] if args.only == "both" else [args.only]):
            train_one(who, args, out)
    plot(out, args.ours_run)


if __name__ == "__main__":
    main()
