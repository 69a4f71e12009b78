"""`ldsrig experiment report DIR`: the paper's tables and figures from a study directory.

Writes to DIR/report/ (or --out):
    report.md / report.html     Table 1, Figure 3, Table 2, Figure 2 grids, ablations; the HTML
                                is self-contained (every figure embedded as a base64 PNG)
    *.png                       the figures
    summary.json                every number in the tables

Conventions. Table 1: per (model, store, group) the mean +- sample std (ddof=1) over seeds of
each run's mean over evaluation images; the better group per metric is bold. dSim per seed is
Sim(control, seed s) - Sim(LDS, seed s). Duplicate percentages are the share of evaluation images
with at least one duplicate (GT-based and GT-free, lds.evaluation). Table 2 pools the per-image
dG over seeds (images joined on image_index within a seed pair). Missing runs or files leave a
cell empty ("-") and are listed under "Missing", so a half-finished study still reports.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError
from lds.experiments.runner import RUNS_DIR, run_dir_of, study_spec
from lds.experiments.spec import ExperimentSpec, RunSpec, expand_runs
from lds.evaluation.metrics.table import DECODED_PREFIX, metric, segmentation_source_of

TABLE1_METRICS = ["mse", "miou", "ari", "fg_ari", "fg_in_bg_slot", "sim", "dup_gt", "dup_nogt",
                  "dup_bg", "active_slots", "largest_segment"]
# Where a model segments with other masks than its decoded ones (MONet), these are shown on the
# decoded masks too, labelled (lds.evaluation.metrics.table).
TABLE1_DECODED = ["miou", "fg_ari", "dup_gt"]


@dataclass
class RunResult:
    run: RunSpec
    eval: dict | None = None                                    # eval.json contents
    eval_k: dict[int, dict] = field(default_factory=dict)       # test K -> eval json
    eval_obs: dict[int, dict] = field(default_factory=dict)     # views observed -> eval json
    gap: dict | None = None

    def mean(self, metric: str, test_k: int | None = None) -> float:
        data = self.eval if test_k is None else self.eval_k.get(test_k)
        if data is None:
            return math.nan
        value = data["aggregates"].get(metric, {}).get("mean")
        return math.nan if value is None else float(value)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def collect(study_dir: Path, spec: ExperimentSpec) -> list[RunResult]:
    results = []
    for run in expand_runs(spec):
        run_dir = run_dir_of(study_dir, run)
        result = RunResult(run, _read_json(run_dir / "eval" / "eval.json"))
        for k in spec.ablations.test_k:
            data = _read_json(run_dir / "eval" / f"eval_K{k}.json")
            if data is not None:
                result.eval_k[int(k)] = data
        for n in spec.eval.observed_views:
            data = _read_json(run_dir / "eval" / f"eval_obs{n}.json")
            if data is not None:
                result.eval_obs[int(n)] = data
        result.gap = _read_json(run_dir / "gap" / "gap.json")
        results.append(result)
    return results


def _fmt(name: str, value: float, digits: int | None = None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    entry = metric(name)
    if entry.scale != 1.0 or digits is None:
        return entry.format(value)
    return f"{value:.{digits}f}"


def _latent_kl(train_row: dict | None) -> float:
    """The latent KL of a training log row: kl_z (MONet, IODINE), kl (MulMON), or GENESIS's two
    latents together (kl_mask + kl_comp; MONet's kl_mask is a mask KL, not a latent one)."""
    if not train_row:
        return math.nan
    if "kl_comp" in train_row:
        return train_row["kl_comp"] + train_row.get("kl_mask", 0.0)
    return next((train_row[k] for k in ("kl_z", "kl") if k in train_row), math.nan)


def _label(name: str, results=None) -> str:
    """Short label; segmentation metrics name their masks when the runs report both sources."""
    source = None
    for r in results or []:
        if r.eval:
            source = segmentation_source_of(r.eval.get("meta", {}))
            break
    return metric(name, source).short_label


def _table1_metrics(results) -> list[str]:
    decoded = {DECODED_PREFIX + m for r in results if r.eval for m in TABLE1_DECODED
               if DECODED_PREFIX + m in r.eval["aggregates"]}
    present = {m for r in results if r.eval for m in r.eval["aggregates"]}
    # a metric added after a study's evaluations ran (largest_segment) is left out, not shown empty
    names = [m for m in TABLE1_METRICS if m in present or not present]
    for m in TABLE1_DECODED:
        if DECODED_PREFIX + m in decoded:
            names.insert(names.index(m) + 1, DECODED_PREFIX + m)
    return names


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    arr = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan, int(arr.size)


# ---- figures ---------------------------------------------------------------------------------

def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


class Report:
    """Accumulates Markdown and HTML side by side, and the figure files."""

    def __init__(self, out_dir: Path, title: str):
        self.out_dir = out_dir
        self.md: list[str] = [f"# {title}", ""]
        self.html: list[str] = [f"<h1>{html.escape(title)}</h1>"]
        self.files: list[Path] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md += ["#" * level + " " + text, ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str) -> None:
        self.md += [text, ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list[str]], bold: set[tuple[int, int]] = frozenset()) -> None:
        def cell_md(i, j, v):
            return f"**{v}**" if (i, j) in bold else v

        self.md.append("| " + " | ".join(header) + " |")
        self.md.append("|" + "|".join("---" for _ in header) + "|")
        for i, row in enumerate(rows):
            self.md.append("| " + " | ".join(cell_md(i, j, v) for j, v in enumerate(row)) + " |")
        self.md.append("")
        parts = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
        for i, row in enumerate(rows):
            cells = []
            for j, v in enumerate(row):
                text = html.escape(v)
                cells.append(f"<td><b>{text}</b></td>" if (i, j) in bold else f"<td>{text}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
        self.html.append("".join(parts))

    def figure(self, name: str, png: bytes, caption: str) -> None:
        path = self.out_dir / name
        path.write_bytes(png)
        self.files.append(path)
        self.md += [f"![{caption}]({name})", "", f"*{caption}*", ""]
        data = base64.b64encode(png).decode("ascii")
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def write(self) -> list[Path]:
        md_path = self.out_dir / "report.md"
        md_path.write_text("\n".join(self.md))
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;"
                 "padding:3px 8px;text-align:right}th{background:#eee}img{max-width:100%}"
                 "figcaption{font-size:90%;color:#444}")
        html_path = self.out_dir / "report.html"
        html_path.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>report</title>"
                             f"<style>{style}</style></head><body>" + "\n".join(self.html)
                             + "</body></html>")
        return [md_path, html_path, *self.files]


# ---- sections --------------------------------------------------------------------------------

def _main_pairs(results: list[RunResult], spec: ExperimentSpec):
    """{(model, store): {seed: (control RunResult, lds RunResult)}} of the main runs."""
    pairs: dict[tuple[str, str], dict[int, list]] = {}
    for r in results:
        if not r.run.is_main:
            continue
        slot = pairs.setdefault((r.run.model, r.run.store), {}).setdefault(r.run.seed, [None, None])
        slot[1 if r.run.lds else 0] = r
    return pairs


def table1(report: Report, results, spec, summary) -> None:
    report.heading("Table 1: control vs LDS (mean ± std over seeds)")
    pairs = _main_pairs(results, spec)
    names = _table1_metrics(results)
    header = ["model", "store", "group", "seeds"] + [_label(m, results) for m in names]
    rows, bold = [], set()
    summary["table1"] = {}
    for (model, store), seeds in pairs.items():
        stats = {}
        for g, name in ((0, "control"), (1, "lds")):
            runs = [pair[g] for pair in seeds.values() if pair[g] is not None and pair[g].eval]
            stats[name] = {m: _mean_std([r.mean(m) for r in runs]) for m in names}
        for g, name in ((0, "control"), (1, "lds")):
            row = [model, store, name, str(stats[name]["mse"][2])]
            for j, m in enumerate(names):
                mean, std, _ = stats[name][m]
                row.append("-" if not math.isfinite(mean) else _fmt(m, mean) if not
                           math.isfinite(std) else f"{_fmt(m, mean)} ± {_fmt(m, std)}")
                other = stats["lds" if name == "control" else "control"][m][0]
                hib = metric(m).higher_is_better
                if hib is not None and math.isfinite(mean) and math.isfinite(other) and mean != other:
                    if (mean > other) == hib:
                        bold.add((len(rows), 4 + j))
            rows.append(row)
        summary["table1"][f"{model}/{store}"] = {
            name: {m: {"mean": v[0], "std": v[1], "n": v[2]} for m, v in s.items()}
            for name, s in stats.items()}
    report.table(header, rows, bold)
    report.paragraph("Bold: the better group for that metric (lower MSE, Sim and duplicate rates; "
                     "higher mIoU, ARI, FG-ARI). Duplicate rates are percentages of images with at "
                     "least one duplicate.")


PER_SEED_METRICS = ("mse", "miou", "fg_ari", "decoded_fg_ari")


def per_seed(report: Report, results, spec, study_dir: Path, summary) -> None:
    """One row per finished main run. Table 1's mean +- std over three seeds cannot tell a
    seed that never decomposed from a uniformly weaker group; the latent KL at the end of
    training can (a posterior-collapsed run's kl_z stays near zero)."""
    from lds.training.logging import read_metrics

    rows, summary["per_seed"] = [], {}
    evaluated = [r for r in results if r.eval]
    # the decoded-mask column only where a model segments with other masks (MONet)
    metrics = [m for m in PER_SEED_METRICS if not m.startswith(DECODED_PREFIX)
               or any(m in r.eval["aggregates"] for r in evaluated)]
    for (model, store), seeds in _main_pairs(results, spec).items():
        for seed in sorted(seeds):
            for r in seeds[seed]:
                if r is None or not r.eval:
                    continue
                run_dir = run_dir_of(study_dir, r.run)
                train_rows = read_metrics(run_dir, "metrics.jsonl")
                val_rows = read_metrics(run_dir, "validation.jsonl")
                kl = _latent_kl(train_rows[-1] if train_rows else None)
                val = val_rows[-1].get("fg_ari", math.nan) if val_rows else math.nan
                test = {m: r.mean(m) for m in metrics}
                summary["per_seed"][r.run.run_id] = {**test, "val_fg_ari": val, "train_kl": kl}
                cells = [_fmt(m, v) if math.isfinite(v) else "-" for m, v in test.items()]
                cells += [f"{v:.{d}f}" if math.isfinite(v) else "-" for v, d in ((val, 3), (kl, 1))]
                rows.append([f"{model}/{store}", str(seed), r.run.group] + cells)
    if not rows:
        return
    report.heading("Per seed")
    report.table(["model/store", "seed", "group"] + [_label(m, evaluated) for m in metrics]
                 + ["FG-ARI, validation, last step", "latent KL, last training window (nats)"],
                 rows)
    report.paragraph("Test scenes unless marked validation. A latent KL near zero at the end of "
                     "training is posterior collapse: the slot latents carry no information.")


def figure3(report: Report, results, spec, summary) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report.heading("Figure 3: dSim and duplicate percentages")
    pairs = _main_pairs(results, spec)
    names, dsim_mean, dsim_std, dup = [], [], [], {}
    summary["figure3"] = {}
    for (model, store), seeds in pairs.items():
        key = f"{model}/{store}"
        dsims = [c.mean("sim") - l.mean("sim") for c, l in seeds.values()
                 if c is not None and l is not None and c.eval and l.eval]
        m, s, n = _mean_std(dsims)
        names.append(key)
        dsim_mean.append(m)
        dsim_std.append(0.0 if not math.isfinite(s) else s)
        dup[key] = {}
        for rate in ("dup_gt", "dup_nogt"):
            for g, name in ((0, "control"), (1, "lds")):
                vals = [pair[g].mean(rate) for pair in seeds.values() if pair[g] and pair[g].eval]
                dup[key][f"{rate}/{name}"] = _mean_std(vals)
        summary["figure3"][key] = {"dSim": {"mean": m, "std": s, "n": n, "per_seed": dsims},
                                   **{k: {"mean": v[0], "std": v[1]} for k, v in dup[key].items()}}
    if not names:
        report.paragraph("No finished control/LDS pair yet.")
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.arange(len(names))
    axes[0].bar(x, dsim_mean, yerr=dsim_std, color="#3a7dc9", capsize=4)
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].set_xticks(x, names, rotation=15, fontsize=8)
    axes[0].set_ylabel("dSim = Sim(control) - Sim(LDS)")
    axes[0].set_title("slot similarity drop")
    width = 0.2
    colours = {"dup_gt/control": "#bbbbbb", "dup_gt/lds": "#d9534f",
               "dup_nogt/control": "#888888", "dup_nogt/lds": "#f0ad4e"}
    for i, (label, colour) in enumerate(colours.items()):
        vals = [100 * dup[n][label][0] for n in names]
        errs = [0.0 if not math.isfinite(dup[n][label][1]) else 100 * dup[n][label][1] for n in names]
        axes[1].bar(x + (i - 1.5) * width, vals, width, yerr=errs, color=colour, capsize=3,
                    label=label.replace("dup_gt", "GT").replace("dup_nogt", "no GT"))
    axes[1].set_xticks(x, names, rotation=15, fontsize=8)
    axes[1].set_ylabel("images with duplicates (%)")
    axes[1].set_title("duplicates")
    axes[1].legend(fontsize=7)
    report.figure("figure3.png", _png(fig), "Figure 3: dSim per model (mean ± std over seeds, "
                  "positive: LDS made slots less similar) and duplicate percentages")
    stds = [summary["figure3"][n]["dSim"]["std"] for n in names]
    rows = [[n, _fmt("sim", dsim_mean[i]) + ("" if not math.isfinite(stds[i]) else
                                             " ± " + _fmt("sim", stds[i]))] +
            [_fmt("dup_gt", dup[n][k][0]) for k in colours] for i, n in enumerate(names)]
    report.table(["model/store", "dSim"] + [k.replace("dup_gt", "dup GT %").replace("dup_nogt", "dup no-GT %")
                                            for k in colours], rows)


def table2(report: Report, results, spec, summary) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import pearsonr

    from lds.evaluation.gap import gap_difference

    report.heading("Table 2: inference gap drop dG and its correlations")
    pairs = _main_pairs(results, spec)
    rows, summary["table2"] = [], {}
    scatter = {}
    for (model, store), seeds in pairs.items():
        dg, dmse, dmiou, gap_c, gap_l = [], [], [], [], []
        for c, l in seeds.values():
            if not (c and l and c.gap and l.gap):
                continue
            diff = gap_difference(c.gap, l.gap, (c.eval or {}).get("records"),
                                  (l.eval or {}).get("records"))
            dg += diff["dG"]
            dmse += diff.get("dMSE", [])
            dmiou += diff.get("dmIoU", [])
            gap_c.append(c.gap["aggregates"]["gap"]["mean"])
            gap_l.append(l.gap["aggregates"]["gap"]["mean"])
        if not dg:
            continue
        dg_arr, key = np.array(dg), f"{model}/{store}"

        def corr(values):
            v = np.array(values, dtype=np.float64)
            ok = np.isfinite(v)
            if len(v) != len(dg_arr) or ok.sum() < 3 or np.std(v[ok]) == 0:
                return None, None
            r, p = pearsonr(dg_arr[ok], v[ok])
            return float(r), float(p)

        r_mse, p_mse = corr(dmse)
        r_miou, p_miou = corr(dmiou)
        samples = {(c or l).gap["meta"]["samples"] for c, l in seeds.values() if c and c.gap}
        summary["table2"][key] = {"mean_dG": float(dg_arr.mean()), "n": len(dg),
                                  "G_control": float(np.mean(gap_c)), "G_lds": float(np.mean(gap_l)),
                                  "pearson_dG_dMSE": r_mse, "p_dMSE": p_mse,
                                  "pearson_dG_dmIoU": r_miou, "p_dmIoU": p_miou,
                                  "samples": sorted(samples)}
        rows.append([key, f"{np.mean(gap_c):.2f}", f"{np.mean(gap_l):.2f}",
                     f"{dg_arr.mean():.3f} ± {dg_arr.std(ddof=1) / math.sqrt(len(dg)):.3f}",
                     "-" if r_mse is None else f"{r_mse:.3f} (p={p_mse:.2g})",
                     "-" if r_miou is None else f"{r_miou:.3f} (p={p_miou:.2g})", str(len(dg))])
        scatter[key] = (dg_arr, np.array(dmse), np.array(dmiou))
    if not rows:
        report.paragraph("No gap results (enable `gap` in the spec and rerun `ldsrig experiment run`).")
        return
    report.table(["model/store", "G control", "G LDS", "mean dG ± s.e.", "r(dG, dMSE)",
                  "r(dG, dmIoU)", "images"], rows)
    report.paragraph("G = log p(x) - ELBO in nats per image (log p(x) importance-weighted). "
                     "dG = G(control) - G(LDS) per image (positive: LDS narrowed the gap); "
                     "dMSE = MSE(control) - MSE(LDS), dmIoU = mIoU(LDS) - mIoU(control) "
                     "(positive: LDS better). Images pooled over seeds.")
    # constrained layout: without it a row's x label runs into the next row's title
    fig, axes = plt.subplots(len(scatter), 2, figsize=(10, 3.6 * len(scatter)), squeeze=False,
                             layout="constrained")
    for row, (key, (dg_arr, dmse, dmiou)) in enumerate(scatter.items()):
        for col, (values, label) in enumerate(((dmse, "dMSE"), (dmiou, "dmIoU"))):
            ax = axes[row, col]
            if len(values) == len(dg_arr):
                ax.scatter(values, dg_arr, s=8, alpha=0.6)
            ax.axhline(dg_arr.mean(), color="r", lw=1, label=f"mean dG {dg_arr.mean():.2f}")
            ax.set_xlabel(label)
            ax.set_ylabel("dG (nats)")
            ax.set_title(key, fontsize=9)
            ax.xaxis.set_major_locator(plt.MaxNLocator(6))   # MSE differences have long labels
            ax.legend(fontsize=7)
    report.figure("table2_scatter.png", _png(fig), "Table 2 scatter: per-image dG against the "
                  "per-image MSE and mIoU differences; red line: mean dG")


def _has_weights(study_dir: Path, *results: RunResult) -> bool:
    """Whether every run has a checkpoint to draw from (a run directory can hold its results
    alone: eval, gap and curves kept, weights not shipped)."""
    from lds.training.checkpoint import list_checkpoints
    from lds.training.runs import CHECKPOINT_DIR

    return all(list_checkpoints(run_dir_of(study_dir, r.run) / CHECKPOINT_DIR) for r in results)


def figure2_grids(report: Report, results, spec, study_dir: Path, summary) -> None:
    from lds.data import open_eval_dataset
    from lds.evaluation.figures import figure2_for_dataset
    from lds.training.runs import load_run

    # Every seed gets its grid: one seed's picture can be a run that never left posterior
    # collapse, which the mean of Table 1 hides.
    # A seed whose control or LDS run is not finished yet is drawn with the one that is.
    report.heading("Figure 2: qualitative grids (each seed; control above LDS)")
    pairs = _main_pairs(results, spec)
    drew, without_weights = False, []
    for (model, store), seeds in pairs.items():
        dataset = None
        for seed in sorted(seeds):
            finished = [(name, r) for name, r in zip(("control", "LDS"), seeds[seed])
                        if r and r.eval]
            if not finished:
                continue
            name = f"figure2_{model}_{store}_seed{seed}.png"
            path = report.out_dir / name
            caption = (f"Figure 2 ({model}, {store}, seed {seed}): Obs | Rec | each component "
                       "alone | Seg; control rows above LDS rows")
            # A run kept as its results only (eval, curves; weights not shipped) cannot be drawn.
            # A grid an earlier report drew into this folder from the same finished runs is kept
            # (a finished run is never trained again, so its final weights drew that picture).
            if not _has_weights(study_dir, *(r for _, r in finished)):
                if path.is_file():
                    report.figure(name, path.read_bytes(), caption + " (drawn by an earlier "
                                  "report from these runs' final weights, which the study "
                                  "directory no longer holds)")
                    drew = True
                else:
                    without_weights.append(f"{model}/{store} seed {seed}")
                continue
            models = {}
            for label, r in finished:
                models[f"{model} {label}"], train_cfg = load_run(run_dir_of(study_dir, r.run))
            # the same test items for every seed: images, or scenes of views for MulMON
            dataset = dataset or open_eval_dataset(spec.stores[store].eval, train_cfg.model)
            figure2_for_dataset(list(models.values()), dataset, spec.figures.num_examples, path,
                                limit=spec.eval.max_images, labels=list(models))
            report.figure(name, path.read_bytes(), caption)
            drew = True
    if without_weights:
        report.paragraph("No grid for " + ", ".join(without_weights) + ": the run directories "
                         "hold the results but not the weights.")
    elif not drew:
        report.paragraph("No finished run to draw.")


def ablations(report: Report, results, spec, summary) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["sim", "dup_gt", "dup_nogt", "mse", "miou"]
    first = spec.seeds[0]
    summary["ablations"] = {}
    if spec.ablations.sigma:
        report.heading("Ablation: the prior's sigma (first seed)")
        for model in spec.models:
            for store in spec.stores:
                points = []
                for r in results:
                    rr = r.run
                    if ((rr.model, rr.store, rr.seed) != (model, store, first)
                            or rr.num_slots is not None or rr.latents is not None):
                        continue
                    if not r.eval:
                        continue
                    if rr.lds:
                        points.append((rr.sigma if rr.sigma is not None else spec.lds.sigma, r))
                control = next((r for r in results if r.run.is_main and not r.run.lds and
                                (r.run.model, r.run.store, r.run.seed) == (model, store, first)
                                and r.eval), None)
                points.sort(key=lambda p: p[0])
                if not points:
                    continue
                rows = [["control (no LDS)"] + [_fmt(m, control.mean(m)) for m in metrics]] if control else []
                rows += [[f"sigma = {s:g}"] + [_fmt(m, r.mean(m)) for m in metrics] for s, r in points]
                report.paragraph(f"{model} on {store}:")
                report.table(["setting"] + [_label(m, results) for m in metrics], rows)
                summary["ablations"][f"sigma/{model}/{store}"] = {
                    f"{s:g}": {m: r.mean(m) for m in metrics} for s, r in points}
                if len(points) > 1:
                    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
                    sig = [p[0] for p in points]
                    for ax, m in zip(axes, ("sim", "dup_nogt", "miou")):
                        ax.plot(sig, [p[1].mean(m) for p in points], "o-", label="LDS")
                        if control:
                            ax.axhline(control.mean(m), color="gray", ls="--", label="control")
                        ax.set_xscale("log")
                        ax.set_xlabel("sigma")
                        ax.set_title(_label(m, results))
                        ax.legend(fontsize=7)
                    report.figure(f"ablation_sigma_{model}_{store}.png", _png(fig),
                                  f"sigma sweep ({model}, {store}, seed {first})")
    if spec.ablations.test_k or spec.ablations.train_k:
        report.heading("Ablation: K at training time vs K at test time (first seed)")
        report.paragraph("Each row is a trained model (its training K); each column evaluates the "
                         "same weights built with another number of slots (MONet's weights do not "
                         "depend on K).")
        for model in spec.models:
            for store in spec.stores:
                for lds in (False, True):
                    runs = [r for r in results if r.run.sigma is None and r.run.latents is None
                            and r.run.lds == lds and
                            (r.run.model, r.run.store, r.run.seed) == (model, store, first) and r.eval]
                    if not runs:
                        continue
                    grid = {}
                    for r in runs:
                        train_k = r.run.num_slots or int(r.eval["meta"].get("num_slots") or 0)
                        grid[train_k] = {train_k: r}
                        for k, data in r.eval_k.items():
                            grid[train_k][k] = RunResult(r.run, data)
                    test_ks = sorted({k for row in grid.values() for k in row})
                    for name_k in ("miou", "dup_nogt", "sim"):
                        rows = [[f"train K={tk}"] + [_fmt(name_k, grid[tk][k].mean(name_k))
                                                     if k in grid[tk] else "-" for k in test_ks]
                                for tk in sorted(grid)]
                        report.paragraph(f"{model} {'LDS' if lds else 'control'} on {store}: "
                                         f"{_label(name_k, results)}")
                        report.table(["trained \\ tested"] + [f"K={k}" for k in test_ks], rows)
                        summary["ablations"][f"K/{model}/{store}/{'lds' if lds else 'control'}/{name_k}"] = {
                            str(tk): {str(k): grid[tk][k].mean(name_k) for k in grid[tk]} for tk in grid}


def training_curves(report: Report, results, spec, study_dir: Path, summary) -> None:
    """Loss terms over training for the main runs (from each run's metrics.jsonl)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for r in results:
        if not r.run.is_main:
            continue
        path = run_dir_of(study_dir, r.run) / "metrics.jsonl"
        if path.is_file():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            curves[r.run] = rows
    if not curves:
        return
    report.heading("Training curves (main runs)")
    terms = [t for t in ("loss", "nll", "kl_z", "kl_mask", "lds") if any(t in row for rows in
                                                                      curves.values() for row in rows)]
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 2.8), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for run, rows in curves.items():
            steps = [row["step"] for row in rows if term in row]
            values = [row[term] for row in rows if term in row]
            if term == "lds" and not run.lds:
                continue                       # the control run does not compute the prior
            ax.plot(steps, values, color="#d9534f" if run.lds else "#3a7dc9", alpha=0.7, lw=1,
                    label=f"{run.group} s{run.seed}")
        ax.set_title(term, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    report.figure("training_curves.png", _png(fig), "Training loss terms per logged window "
                  "(blue: control, red: LDS; lds is the prior value, Eq. 3, LDS runs only)")
    summary["training_final"] = {run.run_id: rows[-1] for run, rows in curves.items() if rows}


CURVE_METRICS = ("fg_ari", "miou", "mse", "decoded_fg_ari", "fg_in_bg_slot", "dup_bg")


_GROUP_COLOURS = {"control": "#3a7dc9", "lds": "#d9534f", "lds-mean": "#3b9a4b",
                  "lds-sample": "#d9534f"}


def _GROUP_ORDER(group: str) -> tuple:
    return (group != "control", group != "lds", group)


def _is_latents_ablation(run: RunSpec) -> bool:
    return run.latents is not None and run.sigma is None and run.num_slots is None


def lds_latents_ablation(report: Report, results, spec, study_dir: Path, summary) -> None:
    """Control, LDS on the main latents and LDS on the ablation's latents, seed by seed: the
    prior on samples cannot see duplicate means of a collapsed posterior (docs/training.md)."""
    from lds.training.logging import read_metrics

    if not spec.ablations.lds_latents:
        return
    metrics = ["mse", "miou", "fg_ari", "sim", "dup_gt"]
    rows, table, per_seed = [], {}, []
    for model in spec.models:
        for store in spec.stores:
            by_group: dict[str, list[RunResult]] = {}
            for r in results:
                if ((r.run.model, r.run.store) == (model, store) and r.eval
                        and (r.run.is_main or _is_latents_ablation(r.run))):
                    by_group.setdefault(r.run.group, []).append(r)
            if not any(g.startswith("lds-") for g in by_group):
                continue
            key = f"{model}/{store}"
            table[key] = {}
            for group in sorted(by_group, key=_GROUP_ORDER):
                runs = by_group[group]
                stats = {m: _mean_std([r.mean(m) for r in runs]) for m in metrics}
                table[key][group] = {m: {"mean": v[0], "std": v[1], "n": v[2]}
                                     for m, v in stats.items()}
                label = "LDS, " + (group[4:] if group.startswith("lds-") else spec.lds.latents)
                rows.append([key, "control" if group == "control" else label, str(len(runs))] +
                            [_fmt(m, v[0]) + (f" ± {_fmt(m, v[1])}" if math.isfinite(v[1]) else "")
                             for m, v in stats.items()])
                for r in runs:
                    train_rows = read_metrics(run_dir_of(study_dir, r.run), "metrics.jsonl")
                    kl = _latent_kl(train_rows[-1] if train_rows else None)
                    per_seed.append([key, str(r.run.seed), "control" if group == "control" else label,
                                     _fmt("fg_ari", r.mean("fg_ari")), _fmt("sim", r.mean("sim")),
                                     f"{kl:.1f}" if math.isfinite(kl) else "-"])
    if not rows:
        return
    summary.setdefault("ablations", {})["lds_latents"] = table
    report.heading("Ablation: the LDS prior on samples or on posterior means (every seed)")
    report.table(["model/store", "group", "seeds"] + [_label(m, results) for m in metrics], rows)
    report.table(["model/store", "seed", "group", _label("fg_ari", results), _label("sim", results),
                  "latent KL, last training window (nats)"], sorted(per_seed))
    report.paragraph("Test scenes. Sim is measured on the posterior means for every group; "
                     "'LDS, sample' puts the prior on the sampled latents (the paper's Eq. 3 "
                     "as trained in the main runs), 'LDS, mean' on the posterior means.")


NOVEL_VIEW_METRICS = ("query_mse", "query_miou", "query_fg_ari")


def novel_views(report: Report, results, spec, summary) -> None:
    """MulMON: the query views' MSE, mIoU and FG-ARI against the number of views observed
    (eval.observed_views), control against LDS, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({n for r in results for n in r.eval_obs})
    keys = sorted({(r.run.model, r.run.store) for r in results if r.eval_obs})
    if not counts or not keys:
        return
    report.heading("Novel views against the number of views observed")
    rows, table = [], {}
    fig, axes = plt.subplots(len(keys), len(NOVEL_VIEW_METRICS),
                             figsize=(3.4 * len(NOVEL_VIEW_METRICS), 2.9 * len(keys)), squeeze=False)
    for row_axes, (model, store) in zip(axes, keys):
        key = f"{model}/{store}"
        table[key] = {}
        for group in ("control", "lds"):
            runs = [r for r in results if (r.run.model, r.run.store) == (model, store)
                    and r.run.is_main and r.run.group == group and r.eval_obs]
            if not runs:
                continue
            table[key][group] = {}
            for n in counts:
                values = {m: _mean_std([_aggregate_mean(r.eval_obs.get(n), m) for r in runs])
                          for m in NOVEL_VIEW_METRICS}
                table[key][group][n] = {m: {"mean": v[0], "std": v[1], "n": v[2]}
                                        for m, v in values.items()}
                rows.append([key, group, str(n), str(values[NOVEL_VIEW_METRICS[0]][2])] +
                            [_fmt(m.removeprefix("query_"), v[0]) +
                             (f" ± {_fmt(m.removeprefix('query_'), v[1])}" if math.isfinite(v[1]) else "")
                             for m, v in values.items()])
            for ax, name in zip(row_axes, NOVEL_VIEW_METRICS):
                means = [table[key][group][n][name]["mean"] for n in counts]
                stds = [table[key][group][n][name]["std"] for n in counts]
                ax.errorbar(counts, means, yerr=[s if math.isfinite(s) else 0 for s in stds],
                            marker="o", capsize=3, label=group,
                            color=_GROUP_COLOURS.get(group, "#777777"))
                ax.set_title(f"{key}: {name.replace('_', ' ')}", fontsize=9)
                ax.set_xticks(counts)
                ax.set_xlabel("views observed", fontsize=8)
                ax.tick_params(labelsize=7)
        row_axes[0].legend(fontsize=7)
    fig.tight_layout()
    report.table(["model/store", "group", "views observed", "seeds", "query MSE", "query mIoU",
                  "query FG-ARI"], rows)
    report.figure("novel_views.png", _png(fig), "The views the model did not observe, predicted "
                  "from the posterior after the first N views of each scene: MSE, mIoU and FG-ARI "
                  "against N on the test scenes, mean ± std over seeds.")
    summary["novel_views"] = table


def _aggregate_mean(data: dict | None, name: str) -> float:
    value = (data or {}).get("aggregates", {}).get(name, {}).get("mean")
    return math.nan if value is None else float(value)


def refinement_iterations(report: Report, results, spec, study_dir: Path, summary) -> None:
    """IODINE and MulMON: Sim of the posterior means at each refinement iteration at test time
    (eval.json's meta), and the LDS prior of each iteration over training (metrics.jsonl's
    ``lds_iter<i>``): does inference pull the slots apart as it refines, and does the prior rise
    as training goes on? Main runs, mean over seeds."""
    from lds.training.logging import read_metrics

    panels: dict[str, dict] = {}
    for model in spec.models:
        for store in spec.stores:
            runs = [r for r in results if (r.run.model, r.run.store) == (model, store)
                    and r.run.is_main and r.eval and "sim_by_iteration" in r.eval.get("meta", {})]
            if runs:
                panels[f"{model}/{store}"] = {"runs": runs}
    if not panels:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report.heading("Sim and the LDS prior per refinement iteration")
    rows, table = [], {}
    fig, axes = plt.subplots(2, len(panels), figsize=(4.0 * len(panels), 6.0), squeeze=False)
    for column, (key, panel) in enumerate(panels.items()):
        table[key] = {}
        sim_ax, prior_ax = axes[0][column], axes[1][column]
        for group in sorted({r.run.group for r in panel["runs"]}, key=_GROUP_ORDER):
            runs = [r for r in panel["runs"] if r.run.group == group]
            curves = np.array([r.eval["meta"]["sim_by_iteration"]["mean"] for r in runs], dtype=float)
            mean = curves.mean(0)
            table[key][group] = mean.tolist()
            rows.append([key, group, str(len(runs))] + [f"{v:.3f}" for v in mean])
            iterations = np.arange(len(mean))
            sim_ax.set_xticks(iterations)
            sim_ax.plot(iterations, mean, "o-", color=_GROUP_COLOURS.get(group, "#777777"), label=group)
            if len(runs) > 1:
                std = curves.std(0, ddof=1)
                sim_ax.fill_between(iterations, mean - std, mean + std, alpha=0.15,
                                    color=_GROUP_COLOURS.get(group, "#777777"))
        labelled = False
        for r in panel["runs"]:
            train_rows = read_metrics(run_dir_of(study_dir, r.run), "metrics.jsonl")
            names = sorted({k for row in train_rows for k in row if k.startswith("lds_iter")},
                           key=lambda k: int(k.removeprefix("lds_iter")))
            colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(names), 1)))
            for colour, name in zip(colours, names):
                steps = [row["step"] for row in train_rows if name in row]
                prior_ax.plot(steps, [row[name] for row in train_rows if name in row], lw=0.8,
                              color=colour, label=None if labelled else
                              f"iteration {name.removeprefix('lds_iter')}")
            labelled = labelled or bool(names)
        sim_ax.set_title(f"{key}: Sim at test time", fontsize=9)
        sim_ax.set_xlabel("refinement iteration", fontsize=8)
        sim_ax.legend(fontsize=7)
        prior_ax.set_title(f"{key}: LDS prior per iteration (LDS runs)", fontsize=9)
        prior_ax.set_xlabel("training step", fontsize=8)
        if labelled:
            prior_ax.legend(fontsize=6)
        else:   # a store trained without LDS: say so rather than draw blank axes
            prior_ax.text(0.5, 0.5, "no LDS run", ha="center", va="center", fontsize=9,
                          color="#777777", transform=prior_ax.transAxes)
            prior_ax.set_xticks([])
            prior_ax.set_yticks([])
        for ax in (sim_ax, prior_ax):
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    width = max(len(r) for r in rows) - 3
    report.table(["model/store", "group", "seeds"] + [f"Sim, iteration {i}" for i in range(width)],
                 [r + [""] * (width + 3 - len(r)) for r in rows])
    report.figure("refinement_iterations.png", _png(fig),
                  "Top: Sim (mean pairwise cosine similarity of the slots' posterior means) after "
                  "each refinement iteration on the test scenes, mean and std over seeds; the "
                  "last iteration is the posterior the metrics score. Bottom: the LDS prior "
                  "(Eq. 3, higher = fewer duplicates) of each iteration per logged training "
                  "window, every LDS run (MulMON: averaged over the observed views).")
    summary["sim_by_iteration"] = table


def validation_curves(report: Report, results, spec, study_dir: Path, summary) -> None:
    """FG-ARI, mIoU, MSE ... against steps on the held-out (validation) scenes, control vs LDS
    (and LDS on other latents where the study has that ablation), mean and std over seeds
    (each run's validation.jsonl)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lds.training.logging import read_metrics

    groups: dict[tuple, dict[str, list[list[dict]]]] = {}
    for r in results:
        if r.run.is_main or _is_latents_ablation(r.run):
            rows = read_metrics(run_dir_of(study_dir, r.run), "validation.jsonl")
            if rows:
                groups.setdefault((r.run.model, r.run.store), {}).setdefault(r.run.group, []).append(rows)
    if not groups:
        return
    report.heading("Learning curves on held-out validation scenes")
    summary["validation_curves"] = {}
    for (model, store), by_group in groups.items():
        names = [m for m in CURVE_METRICS if any(m in rows[0] for runs in by_group.values()
                                                 for rows in runs)]
        fig, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 2.8), squeeze=False)
        key = f"{model}/{store}"
        summary["validation_curves"][key] = {}
        for group, runs in sorted(by_group.items(), key=lambda item: _GROUP_ORDER(item[0])):
            steps = sorted(set.intersection(*[{row["step"] for row in rows} for rows in runs]))
            summary["validation_curves"][key][group] = {"steps": steps, "seeds": len(runs)}
            for ax, name in zip(axes[0], names):
                values = np.array([[next((row.get(name) for row in rows if row["step"] == st), np.nan)
                                    for st in steps] for rows in runs], dtype=float)
                mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
                colour = _GROUP_COLOURS.get(group, "#777777")
                if len(runs) > 1:       # each seed thin: a collapsed seed is not a wide band
                    for seed_values in values:
                        ax.plot(steps, seed_values * metric(name).scale, color=colour, lw=0.5,
                                alpha=0.45)
                ax.plot(steps, mean * metric(name).scale, color=colour,
                        label=f"{group} ({len(runs)} seed{'' if len(runs) == 1 else 's'})")
                ax.fill_between(steps, (mean - std) * metric(name).scale,
                                (mean + std) * metric(name).scale, color=colour, alpha=0.2)
                ax.set_title(_label(name, results), fontsize=8)
                ax.set_xlabel("step", fontsize=8)
                ax.tick_params(labelsize=7)
                summary["validation_curves"][key][group][name] = {"mean": mean.tolist(),
                                                                  "std": std.tolist()}
        axes[0][0].legend(fontsize=7)
        name = f"curves_{model}_{store}.png"
        report.figure(name, _png(fig), f"{model} on {store}: held-out validation scenes during "
                      "training (blue: control, red: LDS, green: LDS on the posterior means "
                      "where run; mean ± std over seeds, each seed thin)")


def figure5(report: Report, results, spec, study_dir: Path, summary) -> None:
    """The supplement's Figure 5 on a store: duplicated table components without and with LDS,
    counted (share of test images whose table is claimed by two or more slots) and pictured
    (the test images where the control run's table is most often split, control above LDS)."""
    import torch

    from datasets.torch_data import ImageDataset
    from lds.evaluation.figures import figure2
    from lds.training.runs import load_run

    pairs = _main_pairs(results, spec)
    rows, drew = [], False
    for (model, store), seeds in pairs.items():
        finished = [(c, l) for c, l in seeds.values() if c and l and c.eval and l.eval
                    and "dup_bg" in c.eval["aggregates"]]
        if not finished:
            continue
        stats = {g: _mean_std([pair[i].mean("dup_bg") for pair in finished])
                 for i, g in enumerate(("control", "lds"))}
        rows.append([f"{model}/{store}", str(len(finished))] +
                    [f"{_fmt('dup_bg', stats[g][0])} ± {_fmt('dup_bg', stats[g][1])}"
                     if math.isfinite(stats[g][1]) else _fmt("dup_bg", stats[g][0]) for g in stats])
        summary.setdefault("figure5", {})[f"{model}/{store}"] = {
            g: {"mean": v[0], "std": v[1], "n": v[2]} for g, v in stats.items()}
        drawable = [pair for pair in finished if _has_weights(study_dir, *pair)]
        if not drawable:
            continue
        c, l = drawable[0]
        split = [r["image_index"] for r in c.eval["records"] if r.get("dup_bg")]
        models = {f"{model} control": load_run(run_dir_of(study_dir, c.run))[0],
                  f"{model} LDS": load_run(run_dir_of(study_dir, l.run))[0]}
        # Pictured image by image; a multi-view model infers a scene from its views together,
        # so its split views are in its Figure 2 grids (one row per view) and only counted here.
        if not split or models[f"{model} control"].item_kind == "scenes":
            continue
        dataset = ImageDataset(spec.stores[store].eval)
        position = {int(dataset[i]["image_index"]): i for i in range(len(dataset))}
        chosen = [position[i] for i in split[:: max(1, len(split) // 4)][:4] if i in position]
        images = torch.stack([dataset[i]["image"] for i in chosen])
        name = f"figure5_{model}_{store}.png"
        path = report.out_dir / name
        figure2(models, images, path)
        if not drew:
            report.heading("Supplement Figure 5: duplicated table components")
            drew = True
        report.figure(name, path.read_bytes(), f"Figure 5 ({model}, {store}, seed {c.run.seed}): "
                      "test images whose table the control run splits between slots; control rows "
                      "above LDS rows")
    if rows:
        if not drew:
            report.heading("Supplement Figure 5: duplicated table components")
        report.table(["model/store", "seeds", "table duplicated, control (%)",
                      "table duplicated, LDS (%)"], rows)
        report.paragraph("A table duplicate: the GT background claimed by two or more slots "
                         "(docs/evaluation.md), counted on every evaluated test image.")


def build_report(study_dir: str | Path, out: str | Path | None = None,
                 draw_grids: bool = True) -> list[Path]:
    """Read every run's eval/gap files and write report.md, report.html, PNGs, summary.json."""
    study_dir = Path(study_dir)
    if not (study_dir / RUNS_DIR).is_dir():
        raise UserError(f"{study_dir} holds no runs (run `ldsrig experiment run SPEC --out {study_dir}`)")
    spec = study_spec(study_dir)
    out_dir = Path(out) if out is not None else study_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = collect(study_dir, spec)
    report = Report(out_dir, f"Experiment report: {spec.name}")
    finished = [r for r in results if r.eval]
    report.paragraph(f"{len(finished)} of {len(results)} runs evaluated; {spec.train.steps} "
                     f"training steps per run; seeds {spec.seeds}; LDS weight {spec.lds.weight}, "
                     f"sigma {spec.lds.sigma}; evaluation on the first "
                     f"{spec.eval.max_images or 'all'} images of each store's eval split.")
    summary: dict[str, Any] = {"spec": spec.name, "runs": len(results), "evaluated": len(finished)}
    table1(report, results, spec, summary)
    per_seed(report, results, spec, study_dir, summary)
    figure3(report, results, spec, summary)
    table2(report, results, spec, summary)
    validation_curves(report, results, spec, study_dir, summary)
    if draw_grids:
        figure2_grids(report, results, spec, study_dir, summary)
        figure5(report, results, spec, study_dir, summary)
    ablations(report, results, spec, summary)
    lds_latents_ablation(report, results, spec, study_dir, summary)
    refinement_iterations(report, results, spec, study_dir, summary)
    novel_views(report, results, spec, summary)
    training_curves(report, results, spec, study_dir, summary)
    missing = [r.run.run_id for r in results if not r.eval]
    if missing:
        report.heading("Missing")
        report.paragraph("Not evaluated yet: " + ", ".join(missing))
    summary["missing"] = missing
    (out_dir / "summary.json").write_text(json.dumps(_clean(summary), indent=1, allow_nan=False,
                                                     default=_json_default))
    return report.write() + [out_dir / "summary.json"]


def _clean(value):
    """NaN/inf -> null (strict JSON), recursively."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    return value


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(type(value))
