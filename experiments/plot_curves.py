"""Validation curves of several training runs in one figure (their validation.jsonl).

    .venv/bin/python experiments/plot_curves.py RUN_DIR[=LABEL] ... --out curves.png \\
        [--metrics fg_ari miou mse decoded_fg_ari] [--x images]

``--x images`` puts images seen (step x batch size, from each run's config) on the x axis, so
runs with different batch sizes compare per image; ``--x steps`` (default) per gradient step.
Also writes the curves as JSON next to the PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lds.evaluation.metrics import metric  # noqa: E402
from lds.training.logging import read_metrics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories, optionally RUN=LABEL")
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics", nargs="+", default=["fg_ari", "miou", "mse", "decoded_fg_ari"])
    parser.add_argument("--x", choices=["steps", "images"], default="steps")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import yaml

    # The legend goes below the panels: inside one, long labels or many runs hide its curves.
    legend_rows = -(-len(args.runs) // 3)
    legend_height, height = 0.2 * legend_rows, 3.0 + 0.2 * legend_rows     # inches
    fig, axes = plt.subplots(1, len(args.metrics), squeeze=False,
                             figsize=(3.6 * len(args.metrics), height))
    curves = {}
    for spec in args.runs:
        run, _, label = spec.partition("=")
        rows = read_metrics(run, "validation.jsonl")
        if not rows:
            raise SystemExit(f"{run} has no validation.jsonl (train with validate.data/validate.every)")
        batch = yaml.safe_load((Path(run) / "config.yaml").read_text())["optim"]["batch_size"]
        scale = batch if args.x == "images" else 1
        label = label or Path(run).name
        x = [row["step"] * scale for row in rows]
        curves[label] = {"run": run, "x": x, **{m: [row.get(m) for row in rows] for m in args.metrics}}
        for ax, name in zip(axes[0], args.metrics):
            ax.plot(x, [row.get(name) for row in rows], label=label)
            ax.set_title(metric(name).label, fontsize=8)
            ax.set_xlabel("images seen" if args.x == "images" else "step", fontsize=8)
            ax.tick_params(labelsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend_height / height, 1, 1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    out.with_suffix(".json").write_text(json.dumps(curves, indent=1))
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
