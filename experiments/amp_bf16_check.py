"""Does bf16 autocast on the CPU train as well as fp32? MulMON and MONet, same seed, side by side.

    .venv/bin/ldsrig data synth clevr-mv /tmp/clevr32.zarr --scenes 40 --size 32 --spp 16
    .venv/bin/python experiments/amp_bf16_check.py /tmp/clevr32.zarr --out /tmp/amp_check \
        [--models mulmon monet] [--steps 300] [--threads 1]

Part 1 (one forward + backward per model, all four models, random 32x32 input, LDS on): the
same parameters, input and noise with and without ``torch.autocast("cpu", bfloat16)``: each loss
term's dtype and relative difference, and the cosine between the two parameter gradients.
CPU autocast runs only convs, matmuls, linear layers and LSTMs in bf16 itself, but their bf16
outputs flow on into whatever follows (log_softmax, exp, sums, KLs, the LDS prior), which then
run in bf16 too, unlike CUDA autocast, which lists those ops as fp32.

Part 2: each model trained ``--steps`` steps by the training loop (lds.training.train) twice,
amp=off and amp=bf16, same seed, data order and initial parameters; LDS on. Prints the logged
loss curves side by side (every ``--log-every`` steps), the final loss (mean of the last quarter
of the rows), the bf16/fp32 ratio and difference (the losses are negative log-likelihoods of
continuous pixels, so they go below zero), any non-finite loss (the loop stops with
NonFiniteLossError), the wall time of each, and writes ``loss_curves.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lds.models import MODEL_CONFIGS, build_model  # noqa: E402
from lds.training.config import LDSConfig  # noqa: E402
from lds.training.objective import training_objective  # noqa: E402

# Small but paper-shaped: K = 7 and D = 16 as in the paper; 32x32 images.
TRAIN_OVERRIDES = {
    "mulmon": ["model.height=32", "model.width=32", "model.num_views=4", "optim.batch_size=2"],
    "monet": ["model.height=32", "model.width=32", "optim.batch_size=8"],
}


def term_errors(name: str) -> list[str]:
    """Part 1 for one model: loss-term dtypes and bf16-vs-fp32 differences at one point."""
    extra = {"viewpoint": "clevr-mv"} if name == "mulmon" else {}
    cfg = MODEL_CONFIGS[name](height=32, width=32, **extra)
    lds_cfg = LDSConfig(enabled=True, weight=1.0)
    torch.manual_seed(0)
    model = build_model(name, cfg).train()
    generator = torch.Generator().manual_seed(1)
    if name == "mulmon":
        batch = {"image": torch.rand(2, 4, 3, 32, 32, generator=generator),
                 "viewpoint": torch.randn(2, 4, 3, generator=generator)}
    else:
        batch = {"image": torch.rand(4, 3, 32, 32, generator=generator)}
    results = {}
    for amp in (False, True):
        torch.manual_seed(5)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(batch)
        loss, prior = training_objective(out, lds_cfg)
        loss.float().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        terms = {k: (float(v.detach()), str(v.dtype).removeprefix("torch."))
                 for k, v in {**out.loss_terms, "lds": prior}.items()}
        results[amp] = (terms, grads)
    (fp32_terms, fp32_grads), (bf16_terms, bf16_grads) = results[False], results[True]
    lines = [f"{name}:"]
    for key, (value, _) in fp32_terms.items():
        other, dtype = bf16_terms[key]
        rel = abs(other - value) / max(abs(value), 1e-12)
        lines.append(f"  {key:<10} fp32 {value:>12.5g}   bf16 {other:>12.5g}   rel. diff {rel:.1e}"
                     f"   (term comes out {dtype} under autocast)")
    cosine = float(torch.nn.functional.cosine_similarity(fp32_grads.double(), bf16_grads.double(), dim=0))
    norm_ratio = float(bf16_grads.norm() / fp32_grads.norm())
    lines.append(f"  parameter gradient: cosine(bf16, fp32) {cosine:.5f}, norm ratio {norm_ratio:.4f}")
    return lines


def train_pair(name: str, store: str, out: Path, steps: int, log_every: int, threads: int):
    """Train ``name`` with amp off and bf16; returns {amp: (rows, seconds, error or None)}."""
    from lds.training.config import load_train_config
    from lds.training.logging import read_metrics
    from lds.training.loop import NonFiniteLossError, train

    runs = {}
    for amp in ("off", "bf16"):
        cfg = load_train_config(name, overrides=TRAIN_OVERRIDES[name] + [
            f"data={store}", f"optim.steps={steps}", f"log.every={log_every}",
            f"log.checkpoint_every={steps}", "log.tensorboard=false", "lds.enabled=true",
            f"threads={threads}", "seed=0", f"amp={amp}"])
        run_dir = out / f"{name}_{amp}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        start, error = time.perf_counter(), None
        try:
            train(cfg, run_dir, progress=False)
        except NonFiniteLossError as exc:
            error = str(exc).split(";")[0]
        runs[amp] = (read_metrics(run_dir), time.perf_counter() - start, error)
        print(f"  {name} amp={amp}: {time.perf_counter() - start:.0f} s"
              f"{'  STOPPED: ' + error if error else ''}", flush=True)
    return runs


def report(name: str, runs: dict) -> list[str]:
    fp32_rows, fp32_s, fp32_err = runs["off"]
    bf16_rows, bf16_s, bf16_err = runs["bf16"]
    by_step = {r["step"]: r for r in bf16_rows}
    terms = [k for k in fp32_rows[0] if k not in ("step", "time", "lr", "images_per_s", "grad_norm")]
    lines = [f"{name}: logged loss (mean over each logging window), fp32 | bf16"]
    lines.append("  " + f"{'step':>6}" + "".join(f"{t:>22}" for t in terms))
    for row in fp32_rows:
        other = by_step.get(row["step"], {})
        cells = "".join(f"{row[t]:>11.4g}{other.get(t, math.nan):>11.4g}" for t in terms)
        lines.append(f"  {row['step']:>6}{cells}")

    def final(rows):                       # mean of the last quarter of the logged windows
        tail = rows[-max(1, len(rows) // 4):]
        return sum(r["loss"] for r in tail) / len(tail)

    a = final(fp32_rows)
    b = final(bf16_rows) if bf16_rows else math.nan
    nonfinite = [r["step"] for r in bf16_rows if not math.isfinite(r["loss"])]
    lines.append(f"  final loss (mean of the last {max(1, len(fp32_rows) // 4)} rows): fp32 {a:.5g}, "
                 f"bf16 {b:.5g}, bf16/fp32 {b / a:.4f}, bf16 - fp32 = {b - a:+.4g} "
                 f"({(b - a) / abs(a):+.2%} of |fp32|; negative: bf16 lower)")
    lines.append(f"  steps reached: fp32 {fp32_rows[-1]['step'] if fp32_rows else 0}, "
                 f"bf16 {bf16_rows[-1]['step'] if bf16_rows else 0}; non-finite: "
                 f"{fp32_err or 'none'} (fp32), {bf16_err or (nonfinite or 'none')} (bf16)")
    lines.append(f"  wall time: fp32 {fp32_s:.0f} s, bf16 {bf16_s:.0f} s (x{fp32_s / bf16_s:.2f}; "
                 f"includes start-up and data loading)")
    return lines


def plot(all_runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_runs), figsize=(6 * len(all_runs), 4), squeeze=False)
    for ax, (name, runs) in zip(axes[0], all_runs.items()):
        for amp, style in (("off", "-"), ("bf16", "--")):
            rows = runs[amp][0]
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], style,
                    label="fp32" if amp == "off" else "bf16 autocast")
        ax.set_title(f"{name} (LDS on, 32x32, same seed)")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="a clevr-mv store at 32x32 (ldsrig data synth ... --size 32)")
    parser.add_argument("--out", default="amp_bf16_check")
    parser.add_argument("--models", nargs="+", default=["mulmon", "monet"], choices=sorted(TRAIN_OVERRIDES))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-terms", action="store_true", help="skip part 1")
    parser.add_argument("--skip-training", action="store_true", help="skip part 2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    lines = [f"torch {torch.__version__}, {args.threads} thread(s)"]
    if not args.skip_terms:
        lines.append("Part 1: one step at the same point, fp32 vs bf16 autocast (LDS weight 1)")
        for name in ("monet", "iodine", "mulmon", "genesis"):
            lines += term_errors(name)
        print("\n".join(lines), flush=True)
    if args.skip_training:
        return
    all_runs = {}
    for name in args.models:
        all_runs[name] = train_pair(name, args.store, out, args.steps, args.log_every, args.threads)
    lines.append(f"Part 2: {args.steps} training steps, amp=off vs amp=bf16, same seed")
    for name, runs in all_runs.items():
        lines += report(name, runs)
    text = "\n".join(lines)
    print(text)
    (out / "report.txt").write_text(text + "\n")
    plot(all_runs, out / "loss_curves.png")
    print(f"wrote {out / 'report.txt'} and {out / 'loss_curves.png'}")


if __name__ == "__main__":
    main()
