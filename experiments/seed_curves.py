"""What the *_vs_public.py comparisons share: their stores checked in one line each, their
curve files (one JSON row per evaluation, per model and seed) read and lined up over seeds, and
their curves of ours against theirs drawn (plot_comparison)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.errors import UserError


def require_stores(**stores: str | None) -> None:
    """Each named store (``train=..., val=...``) given and present, or one line naming it."""
    for name, path in stores.items():
        if not path:
            raise UserError(f"--{name} STORE is needed to train")
        if not Path(path).exists():
            raise UserError(f"--{name} store {path} does not exist")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def common_steps(runs: list[list[dict]]) -> list[int]:
    """The steps every run evaluated at."""
    return sorted(set.intersection(*[{r["step"] for r in rows} for rows in runs]))


def values_at(runs: list[list[dict]], steps: list[int], key: str) -> np.ndarray:
    """(runs, steps) values of ``key``; NaN where a run's row lacks it."""
    return np.array([[next((r.get(key) for r in rows if r["step"] == s), None) for s in steps]
                     for rows in runs], dtype=float)


def _json_floats(values) -> list:
    return [None if np.isnan(x) else float(x) for x in values]


def plot_comparison(out: Path, labels: dict[str, str], panels, speed_key: str) -> None:
    """OUT/curves.png and OUT/summary.json from OUT/<who>_seed*.jsonl, one colour per model.

    ``labels``: model ("ours", "theirs") -> legend name. ``panels``: (metric, title, query
    metric or None) per panel; a query metric (MulMON's held-out views) is drawn dashed in the
    same panel. Each curve is the mean over seeds at the steps all seeds evaluated, with ± 1 std
    shaded; steps without a value (the loss at step 0) are skipped. ``speed_key`` is the row field
    whose last value per seed the summary lists (images_per_s, scenes_per_s)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {who: [read_rows(p) for p in sorted(out.glob(f"{who}_seed*.jsonl"))] for who in labels}
    if not any(curves.values()):
        raise UserError(f"no curves ({', '.join(f'{who}_seed*.jsonl' for who in labels)}) in {out}")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    summary: dict = {}
    for colour, who in zip(("C0", "C1"), labels):
        runs = [rows for rows in curves[who] if rows]
        if not runs:
            continue
        steps = common_steps(runs)
        seeds = f"{len(runs)} seed{'s' if len(runs) != 1 else ''}"
        summary[who] = {"runs": len(runs), "steps": steps,
                        "stopped": [rows[-1]["stopped"] for rows in runs if "stopped" in rows[-1]]}
        for ax, (name, title, query_name) in zip(axes, panels):
            for key, style, suffix in ((name, "-", ""), (query_name, "--", " (query views)")):
                if key is None:
                    continue
                values = values_at(runs, steps, key)
                if np.isnan(values).all():
                    continue
                with warnings.catch_warnings():          # a step without a value (loss at 0)
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
                ax.plot(steps, mean, style, color=colour, marker=".",
                        label=f"{labels[who]}{suffix} ({seeds})")
                if len(runs) > 1:
                    ax.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.15)
                summary[who][key] = {"mean": _json_floats(mean), "std": _json_floats(std),
                                     "final_per_seed": _json_floats(values[:, -1])}
            ax.set_title(title + ("" if query_name is None else " (held out; solid: observed)"),
                         fontsize=9)
            ax.set_xlabel("step")
        summary[who][speed_key] = [rows[-1][speed_key] for rows in runs if rows[-1].get(speed_key)]
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out / 'curves.png'} and {out / 'summary.json'}")
