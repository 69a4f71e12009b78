"""Experiment specs, the resumable study runner and the report, end to end on tiny runs."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from lds.experiments.runner import (execute_run, is_finished, load_run_with_slots, run_dir_of,
                                    train_config_for)
from lds.experiments.spec import (RunSpec, SpecError, expand_runs, load_spec, parse_slice,
                                  select_slice)
from tests.test_eval_cli import make_store

TINY_MODEL = ["model.height=16", "model.width=16", "model.num_slots=3", "model.latent_dim=4",
              "model.unet_channels=[8,8,8]", "model.unet_mlp_hidden=16",
              "model.encoder_channels=[8,8]", "model.encoder_hidden=16",
              "model.decoder_channels=[8,8]"]


def write_spec(path, store, **extra):
    spec = {"name": "tiny", "stores": {"toy": {"train": str(store), "val": str(store)}},
            "models": {"monet": TINY_MODEL}, "seeds": [0],
            "train": {"steps": 2, "overrides": ["optim.batch_size=2", "log.every=1",
                                                "log.checkpoint_every=1", "log.tensorboard=false",
                                                "validate.every=1"]},
            "eval": {"batch_size": 4},
            "gap": {"enabled": True, "samples": 8, "max_images": 3, "chunk": 4, "batch_size": 2},
            "figures": {"num_examples": 2},
            "ablations": {"test_k": [2, 4]}}
    spec.update(extra)
    path.write_text(yaml.safe_dump(spec))
    return path


def test_spec_expands_to_main_runs_then_ablations(tmp_path):
    spec_path = write_spec(tmp_path / "spec.yaml", tmp_path / "store", seeds=[0, 1],
                           ablations={"sigma": [0.1, 0.3], "train_k": [5], "test_k": [],
                                      "lds_latents": ["mean", "sample"]})
    spec = load_spec(spec_path)
    runs = expand_runs(spec)
    assert [r.run_id for r in runs] == [
        "monet__toy__control__seed0", "monet__toy__lds__seed0",
        "monet__toy__control__seed1", "monet__toy__lds__seed1",
        "monet__toy__lds-sigma0.3__seed0",          # sigma 0.1 is the main LDS run already
        "monet__toy__control-K5__seed0", "monet__toy__lds-K5__seed0",
        # every seed; "sample" is what the main LDS runs use already
        "monet__toy__lds-mean__seed0", "monet__toy__lds-mean__seed1"]
    assert [train_config_for(spec, r).lds.latents for r in runs[-3:]] == ["sample", "mean", "mean"]
    later = load_spec(spec_path, ["lds.from_iteration=1"])     # every LDS run of the study
    assert {train_config_for(later, r).lds.from_iteration for r in runs} == {1}
    assert not runs[-1].is_main and runs[-1].lds
    assert spec.stores["toy"].eval == spec.stores["toy"].train == str(tmp_path / "store")
    assert parse_slice("1/3") == (1, 3)
    slices = [select_slice(runs, i, 3) for i in range(3)]
    assert sorted(r.run_id for s in slices for r in s) == sorted(r.run_id for r in runs)
    assert all(not (set(a) & set(b)) for a in slices for b in slices if a is not b)


@pytest.mark.parametrize("spec_path", sorted(
    (Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_spec_builds_each_runs_config(spec_path):
    # The committed studies are the record of how each result was made: a config key renamed
    # or removed later must fail here, not when someone reruns a study. Stores need not exist.
    spec = load_spec(spec_path)
    runs = expand_runs(spec)
    assert runs and len({r.run_id for r in runs}) == len(runs)
    for run in runs:
        cfg = train_config_for(spec, run)
        assert cfg.optim.steps == spec.train.steps and cfg.seed == run.seed
        assert cfg.lds.enabled == run.lds
        assert cfg.data == spec.stores[run.store].train


def test_bad_specs_are_user_errors(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="unknown model"):
        load_spec(write_spec(tmp_path / "a.yaml", "s", models={"vae9000": []}))
    with pytest.raises(SpecError, match="unknown config key"):
        load_spec(write_spec(tmp_path / "b.yaml", "s", trian={"steps": 3}))
    with pytest.raises(SpecError, match="LDS latents must be one of sample, mean"):
        load_spec(write_spec(tmp_path / "c.yaml", "s", ablations={"lds_latents": ["median"]}))
    with pytest.raises(SpecError, match="from_iteration must be >= 0"):
        load_spec(write_spec(tmp_path / "d.yaml", "s"), ["lds.from_iteration=-1"])
    with pytest.raises(SpecError, match="slice"):
        parse_slice("3/2")


def test_tiny_study_end_to_end_resumes_without_retraining(tmp_path):
    from cli import app

    store = tmp_path / "store"
    make_store(store, scenes=2)
    spec_path = write_spec(tmp_path / "spec.yaml", store)
    study = tmp_path / "study"
    runner = CliRunner()

    # A half-finished study: only slice 0 of 2 (the control run) has been run.
    result = runner.invoke(app, ["experiment", "run", str(spec_path), "--out", str(study),
                                 "--slice", "0/2", "--no-progress"])
    assert result.exit_code == 0, result.output
    spec = load_spec(spec_path)
    control, lds = expand_runs(spec)
    assert is_finished(run_dir_of(study, control), 2)
    assert not run_dir_of(study, lds).exists()
    checkpoint = run_dir_of(study, control) / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()}

    # The whole study: the finished control run is not retrained, the LDS run is trained.
    result = runner.invoke(app, ["experiment", "run", str(spec_path), "--out", str(study),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "1 trained now, 1 already trained" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()} == before
    rows = [json.loads(line) for line in (study / "status.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows if r["run"] == control.run_id].count("train") == 1
    assert is_finished(run_dir_of(study, lds), 2)
    for run in (control, lds):
        run_dir = run_dir_of(study, run)
        for name in ("eval.json", "eval_K2.json", "eval_K4.json"):
            assert (run_dir / "eval" / name).is_file()
        gap = json.loads((run_dir / "gap" / "gap.json").read_text())
        assert gap["meta"]["num_images"] == 3 and all(r["gap"] >= 0 for r in gap["records"])
    lds_eval = json.loads((run_dir_of(study, lds) / "eval" / "eval.json").read_text())
    assert lds_eval["meta"]["lds"]["enabled"] is True and lds_eval["meta"]["num_slots"] == 3
    assert json.loads((run_dir_of(study, lds) / "eval" / "eval_K4.json").read_text())["meta"]["num_slots"] == 4

    # A third run does nothing at all.
    result = runner.invoke(app, ["experiment", "run", str(spec_path), "--out", str(study),
                                 "--no-progress"])
    assert result.exit_code == 0 and "0 trained now, 2 already trained" in result.output
    assert len((study / "status.jsonl").read_text().splitlines()) == len(rows)
    # A pass over finished runs evaluates at the run's own thread count, not torch's default.
    threads_before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        spec.train.overrides = [*spec.train.overrides, "threads=2"]
        assert set(execute_run(spec, control, study, progress=False).values()) == {"skipped"}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads_before)

    # The report: tables, figures embedded in the HTML, summary numbers.
    result = runner.invoke(app, ["experiment", "report", str(study)])
    assert result.exit_code == 0, result.output
    report_dir = study / "report"
    md = (report_dir / "report.md").read_text()
    for heading in ("Table 1", "Figure 3", "Table 2", "Figure 2", "K at training time",
                    "Learning curves on held-out", "Supplement Figure 5"):
        assert heading in md
    assert summary_steps(report_dir) == [0, 1, 2]
    html = (report_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "<table>" in html
    summary = json.loads((report_dir / "summary.json").read_text())
    table1 = summary["table1"]["monet/toy"]
    assert table1["control"]["mse"]["n"] == 1 and 0 <= table1["lds"]["miou"]["mean"] <= 1
    assert summary["table2"]["monet/toy"]["n"] == 3
    dsim = summary["figure3"]["monet/toy"]["dSim"]["mean"]
    assert dsim == pytest.approx(table1["control"]["sim"]["mean"] - table1["lds"]["sim"]["mean"])
    assert (report_dir / "figure3.png").stat().st_size > 1000
    # One row per run beside the means, with the run's own test FG-ARI and its last latent KL.
    per_seed = summary["per_seed"]
    assert set(per_seed) == {control.run_id, lds.run_id} and "Per seed" in md
    assert per_seed[lds.run_id]["fg_ari"] == pytest.approx(table1["lds"]["fg_ari"]["mean"])
    assert per_seed[control.run_id]["train_kl"] > 0
    assert (report_dir / "figure2_monet_toy_seed0.png").is_file()

    # A run kept as its results alone (weights not shipped): the tables stay, the grid says why
    # it is missing instead of failing.
    shutil.rmtree(run_dir_of(study, lds) / "checkpoints")
    result = runner.invoke(app, ["experiment", "report", str(study), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "r2" / "report.md").read_text()
    assert "No grid for monet/toy seed 0: the run directories hold the results" in md
    assert "Table 1" in md and not (tmp_path / "r2" / "figure2_monet_toy_seed0.png").exists()
    # Reported again into the folder that holds the grid drawn from those weights: kept, and said so.
    result = runner.invoke(app, ["experiment", "report", str(study)])
    assert result.exit_code == 0, result.output
    md = (report_dir / "report.md").read_text()
    assert "No grid" not in md and "(figure2_monet_toy_seed0.png)" in md
    assert "drawn by an earlier report from these runs' final weights" in md


def summary_steps(report_dir):
    curves = json.loads((report_dir / "summary.json").read_text())["validation_curves"]
    return curves["monet/toy"]["control"]["steps"]


def test_run_dir_without_checkpoint_restarts_and_other_k_loads_same_weights(tmp_path):
    from lds.experiments.runner import execute_run

    store = tmp_path / "store"
    make_store(store, scenes=1)
    spec = load_spec(write_spec(tmp_path / "spec.yaml", store, gap={"enabled": False},
                                ablations={}))
    run = RunSpec("monet", "toy", 0, lds=True)
    run_dir = run_dir_of(tmp_path / "study", run)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("left: by a run killed before its first checkpoint\n")
    happened = execute_run(spec, run, tmp_path / "study", progress=False)
    assert happened == {"train": "done", "eval": "done"}
    model3, _ = load_run_with_slots(run_dir)
    model6, cfg6 = load_run_with_slots(run_dir, 6)
    assert model6.num_slots == 6 and cfg6.model.num_slots == 6
    for (name, a), (_, b) in zip(model3.state_dict().items(), model6.state_dict().items()):
        assert a.shape == b.shape and bool((a == b).all()), name


def test_only_the_selected_runs_stores_must_exist(tmp_path):
    """--only over one store's runs needs no other store; a run whose store is missing is one line."""
    from cli import app

    store = tmp_path / "store"
    make_store(store, scenes=2)
    missing = tmp_path / "not_rendered_yet.zarr"
    spec_path = write_spec(tmp_path / "spec.yaml", store,
                           stores={"toy": {"train": str(store), "val": str(store)},
                                   "other": {"train": str(missing), "val": str(missing)}},
                           gap={"enabled": False}, ablations={})
    study = tmp_path / "study"
    runner = CliRunner()
    result = runner.invoke(app, ["experiment", "run", str(spec_path), "--out", str(study),
                                 "--only", "*__other__*", "--no-progress"])
    assert result.exit_code != 0     # the UserError that cli.main prints as one line
    assert str(result.exception) == f"store 'other': {missing} does not exist"
    result = runner.invoke(app, ["experiment", "run", str(spec_path), "--out", str(study),
                                 "--only", "*__toy__control__*", "--no-progress"])
    assert result.exit_code == 0, result.output
    spec = load_spec(spec_path)
    toy_control = next(r for r in expand_runs(spec) if r.store == "toy" and not r.lds)
    assert is_finished(run_dir_of(study, toy_control), 2)


def test_lds_latents_ablation_trains_every_seed_and_is_reported_beside_the_main_runs(tmp_path):
    from cli import app

    store = tmp_path / "store"
    make_store(store, scenes=2)
    spec_path = write_spec(tmp_path / "spec.yaml", store, seeds=[0, 1],
                           gap={"enabled": False}, ablations={"lds_latents": ["mean"]})
    study = tmp_path / "study"
    runner = CliRunner()
    result = runner.invoke(app, ["experiment", "run", str(spec_path), "--out", str(study),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    spec = load_spec(spec_path)
    ablation = [r for r in expand_runs(spec) if r.latents == "mean"]
    assert [r.seed for r in ablation] == [0, 1]
    for run in ablation:
        meta = json.loads((run_dir_of(study, run) / "eval" / "eval.json").read_text())["meta"]
        assert meta["lds"] == {"enabled": True, "weight": 0.5, "sigma": 0.1, "latents": "mean"}
    result = runner.invoke(app, ["experiment", "report", str(study)])
    assert result.exit_code == 0, result.output
    md = (study / "report" / "report.md").read_text()
    assert "Ablation: the LDS prior on samples or on posterior means" in md
    summary = json.loads((study / "report" / "summary.json").read_text())
    table = summary["ablations"]["lds_latents"]["monet/toy"]
    assert set(table) == {"control", "lds", "lds-mean"}
    assert all(table[g]["fg_ari"]["n"] == 2 for g in table)
    assert set(summary["validation_curves"]["monet/toy"]) == {"control", "lds", "lds-mean"}
    # the main comparison (Table 1) still pairs control with the main LDS runs only
    assert summary["table1"]["monet/toy"]["lds"]["mse"]["n"] == 2


def test_a_gap_file_from_before_the_amp_setting_counts_as_fp32(tmp_path):
    from lds.experiments.runner import _eval_file_current

    path = tmp_path / "gap.json"
    path.write_text(json.dumps({"meta": {"checkpoint_step": 8, "samples": 500}}))
    assert _eval_file_current(path, 8, samples=500, amp="off")
    assert not _eval_file_current(path, 8, samples=500, amp="bf16")     # recomputed in bf16
    path.write_text(json.dumps({"meta": {"checkpoint_step": 8, "samples": 500, "amp": "bf16"}}))
    assert not _eval_file_current(path, 8, samples=500, amp="off")


def test_a_study_written_before_a_setting_existed_still_matches_its_spec(tmp_path):
    """lds.latents and lds.from_iteration were added after studies were started: their saved
    spec.yaml lacks them, and the same spec read today (with the defaults) must not be refused
    as a different study."""
    from common.errors import UserError
    from lds.experiments.runner import write_spec as save_study_spec

    spec_path = write_spec(tmp_path / "spec.yaml", tmp_path / "store")
    study = tmp_path / "study"
    saved = save_study_spec(load_spec(spec_path), study)
    data = yaml.safe_load(saved.read_text())
    del data["lds"]["latents"], data["lds"]["from_iteration"]
    saved.write_text(yaml.safe_dump(data))
    save_study_spec(load_spec(spec_path), study)             # the same study: no error
    with pytest.raises(UserError, match="different 'lds' section"):
        save_study_spec(load_spec(spec_path, ["lds.latents=mean"]), study)


def test_iterative_models_report_sim_and_the_prior_per_refinement_iteration(tmp_path):
    """IODINE's study report has the per-iteration section (issue 14): Sim after each of the
    T + 1 decodes on the test scenes for control and LDS, and the LDS runs' prior per
    iteration over training, drawn and in summary.json."""
    from cli import app
    from tests.test_iodine import TINY_OVERRIDES as IODINE_TINY

    store = tmp_path / "store"
    make_store(store, scenes=2)
    spec_path = write_spec(tmp_path / "spec.yaml", store, gap={"enabled": False}, ablations={},
                           models={"iodine": [o for o in IODINE_TINY if o.startswith("model.")]})
    study = tmp_path / "study"
    runner = CliRunner()
    result = runner.invoke(app, ["experiment", "run", str(spec_path), "--out", str(study),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["experiment", "report", str(study)])
    assert result.exit_code == 0, result.output
    assert "Sim and the LDS prior per refinement iteration" in (study / "report" / "report.md").read_text()
    assert (study / "report" / "refinement_iterations.png").is_file()
    table = json.loads((study / "report" / "summary.json").read_text())["sim_by_iteration"]["iodine/toy"]
    assert set(table) == {"control", "lds"}
    assert all(len(values) == 4 and all(-1 <= v <= 1 for v in values) for values in table.values())


def test_mulmon_study_evaluates_novel_views_against_the_views_observed(tmp_path):
    """eval.observed_views: each main MulMON run is also evaluated observing 1 and 2 views per
    scene (eval_obs<N>.json, the rest query views), and the report tables and draws the query
    views' MSE, mIoU and FG-ARI against N for control and LDS."""
    from cli import app
    from tests.test_mulmon import make_views_store

    store = tmp_path / "views.zarr"
    make_views_store(store)
    spec_path = write_spec(tmp_path / "spec.yaml", store, gap={"enabled": False}, ablations={},
                           eval={"batch_size": 2, "observed_views": [1, 2]},
                           models={"mulmon": ["model.height=32", "model.width=32",
                                              "model.num_slots=3", "model.num_iterations=2",
                                              "model.num_views=4"]})
    study = tmp_path / "study"
    runner = CliRunner()
    result = runner.invoke(app, ["experiment", "run", str(spec_path), "--out", str(study),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    for run in expand_runs(load_spec(spec_path)):
        for n, query in ((1, 6), (2, 4)):
            data = json.loads((run_dir_of(study, run) / "eval" / f"eval_obs{n}.json").read_text())
            assert data["meta"]["observed_views"] == n
            assert data["meta"]["views"]["query"] == query      # 2 scenes x (4 - n) views
    result = runner.invoke(app, ["experiment", "report", str(study)])
    assert result.exit_code == 0, result.output
    assert "Novel views against the number of views observed" in (study / "report" / "report.md").read_text()
    assert (study / "report" / "novel_views.png").is_file()
    table = json.loads((study / "report" / "summary.json").read_text())["novel_views"]["mulmon/toy"]
    assert set(table) == {"control", "lds"} and set(table["lds"]) == {"1", "2"}
    assert table["lds"]["1"]["query_mse"]["n"] == 1


def test_a_curriculum_study_starts_each_run_from_its_own_earlier_run(tmp_path):
    """train.init_from: each arm and seed of stage 2 starts from the same run of stage 1 (its
    parameters, not the others'); a missing start is one line before anything trains."""
    from cli import app
    from safetensors.torch import load_file

    store = tmp_path / "store"
    make_store(store, scenes=2)
    first = load_spec(write_spec(tmp_path / "first.yaml", store, gap={"enabled": False},
                                 ablations={}))
    for run in expand_runs(first):
        execute_run(first, run, tmp_path / "stage1", progress=False)
    template = "stage1/runs/{run_id}/checkpoints/step_0000002.safetensors"
    second_path = write_spec(tmp_path / "second.yaml", store, gap={"enabled": False}, ablations={},
                             train={"steps": 1, "init_from": template,
                                    "overrides": ["optim.batch_size=2", "log.every=1",
                                                  "log.checkpoint_every=1", "log.tensorboard=false",
                                                  "optim.lr=1e-9"]})
    second = load_spec(second_path)
    for run in expand_runs(second):
        start = second.train.init_path(run)
        assert start == str(tmp_path / "stage1" / "runs" / run.run_id / "checkpoints" / "step_0000002.safetensors")
        assert train_config_for(second, run).init_from == start
        execute_run(second, run, tmp_path / "stage2", progress=False)
        # lr 1e-9: one step leaves the parameters where they started, so they must be stage 1's
        after = load_file(str(run_dir_of(tmp_path / "stage2", run) / "checkpoints" / "step_0000001.safetensors"))
        before = load_file(start)
        assert after.keys() == before.keys()
        assert all(torch.allclose(after[k], before[k], rtol=0, atol=1e-6) for k in before)
    control, lds = (load_file(second.train.init_path(r)) for r in expand_runs(second))
    assert any(not torch.equal(control[k], lds[k]) for k in control)

    with pytest.raises(SpecError, match="not a template"):
        load_spec(write_spec(tmp_path / "bad.yaml", store, train={"init_from": "{run}/x"}))
    missing = write_spec(tmp_path / "missing.yaml", store, gap={"enabled": False}, ablations={},
                         train={"steps": 1, "init_from": "nowhere/{run_id}.safetensors"})
    result = CliRunner().invoke(app, ["experiment", "run", str(missing), "--out",
                                      str(tmp_path / "stage3"), "--no-progress"])
    assert result.exit_code != 0
    assert str(result.exception) == (f"monet__toy__control__seed0: train.init_from "
                                     f"{tmp_path}/nowhere/monet__toy__control__seed0.safetensors does not exist")


def test_a_study_takes_added_stores_and_models_but_refuses_changed_ones(tmp_path):
    """A camera-spread question adds a store to a finished study: its runs stay valid, so the
    spec with one more store (or model) is the same study; a store whose path changed is not."""
    from common.errors import UserError
    from lds.experiments.runner import write_spec as save_study_spec

    store = tmp_path / "store"
    spec_path = write_spec(tmp_path / "spec.yaml", store)
    study = tmp_path / "study"
    save_study_spec(load_spec(spec_path), study)
    wider = {"toy": {"train": str(store), "val": str(store)},
             "ring": {"train": str(tmp_path / "ring"), "val": str(tmp_path / "ring")}}
    save_study_spec(load_spec(write_spec(tmp_path / "wider.yaml", store, stores=wider)), study)
    saved = yaml.safe_load((study / "spec.yaml").read_text())
    assert set(saved["stores"]) == {"toy", "ring"}
    moved = {"toy": {"train": str(tmp_path / "elsewhere"), "val": str(store)}}
    with pytest.raises(UserError, match=r"stores \['ring', 'toy'\] differ or are dropped"):
        save_study_spec(load_spec(write_spec(tmp_path / "moved.yaml", store, stores=moved)), study)
