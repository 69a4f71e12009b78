"""evaluate(): per-image records, aggregates with standard errors, JSON round trip, comparison."""

import json
import math

import pytest
import torch
from rich.console import Console
from torch import nn

from lds.contract import ModelOutput
from lds.evaluation import EvalFileError, EvalResult, aggregate, compare, comparison_table, evaluate, result_table
from lds.models.monet import MONet, MONetConfig

H = W = 16


class LabelOracle(nn.Module):
    """A fixed model whose slot k draws GT label k exactly (or a duplicate of label 1 in the
    last slot): known answers for the whole evaluation pipeline. Not a stand-in for a trained
    model; it exists because its metrics are known exactly."""

    num_slots = 4

    def __init__(self, duplicate: bool = False):
        super().__init__()
        self.duplicate = duplicate

    def forward(self, batch: dict) -> ModelOutput:
        labels = batch["label_map"]
        one_hot = nn.functional.one_hot(labels, self.num_slots).permute(0, 3, 1, 2).float()
        logits = (one_hot * 24.0 - 12.0).unsqueeze(2)
        if self.duplicate:
            logits[:, -1] = logits[:, 1] - 1e-3          # slot 3 also draws object 1, alone
        masks = logits.softmax(dim=1)
        image = batch["image"]
        appearance = image.unsqueeze(1).expand(-1, self.num_slots, -1, -1, -1)
        b = image.shape[0]
        latents = torch.eye(self.num_slots).expand(b, -1, -1).clone()
        zero = image.new_zeros(())
        return ModelOutput(zero, {"nll": zero}, latents, latents, torch.zeros_like(latents),
                           logits, masks, appearance, (masks * appearance).sum(1))


def make_dataset(n: int = 5) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        label_map = torch.zeros(H, W, dtype=torch.long)
        label_map[2:7, 2:7] = 1
        label_map[9:14, 8 + i % 3:13 + i % 3] = 2
        items.append({"image": torch.rand(3, H, W, generator=generator), "label_map": label_map,
                      "image_index": torch.tensor(100 + i), "scene_index": torch.tensor(i // 2)})
    return items


def test_aggregate_mean_and_standard_error():
    agg = aggregate([1.0, 2.0, 3.0, float("nan")])
    assert agg["n"] == 3 and agg["mean"] == pytest.approx(2.0)
    assert agg["stderr"] == pytest.approx(1.0 / math.sqrt(3))
    assert aggregate([]) == {"mean": None, "stderr": None, "n": 0}


def test_evaluate_oracle_gives_known_metrics_and_round_trips(tmp_path):
    data = make_dataset(5)
    result = evaluate(LabelOracle(), data, batch_size=2, progress=False)
    assert [r["image_index"] for r in result.records] == [100, 101, 102, 103, 104]
    assert [r["scene_index"] for r in result.records] == [0, 0, 1, 1, 2]
    assert result.mean("miou") == 1.0 and result.mean("ari") == pytest.approx(1.0)
    assert result.mean("mse") < 1e-8 and result.mean("dup_gt") == 0.0
    assert result.aggregates["miou"]["n"] == 5 and result.meta["ground_truth"] is True
    path = result.save(tmp_path / "eval" / "eval.json")
    loaded = EvalResult.load(path)
    assert loaded.aggregates == json.loads(json.dumps(result.aggregates))
    assert len(loaded.records) == 5 and loaded.records[2]["miou"] == 1.0
    console = Console(record=True, width=120)
    console.print(result_table(loaded))
    text = console.export_text()
    assert "mIoU (Hungarian)" in text and "1.0000" in text

    limited = evaluate(LabelOracle(duplicate=True), data, batch_size=4, max_images=3, progress=False)
    assert len(limited.records) == 3
    assert limited.mean("dup_gt") == 1.0 and limited.mean("dup_nogt") == 1.0


def test_compare_reports_dsim_and_deltas():
    data = make_dataset(4)
    control = evaluate(LabelOracle(duplicate=True), data, batch_size=4, progress=False)
    lds = evaluate(LabelOracle(), data, batch_size=4, progress=False)
    rows = compare(control, lds)
    assert rows["dup_gt"]["control"] == 1.0 and rows["dup_gt"]["lds"] == 0.0
    assert rows["dup_gt"]["delta"] == -1.0 and rows["dup_gt"]["lds_better"] is True
    assert rows["dSim"]["delta"] == pytest.approx(-rows["sim"]["delta"])
    assert comparison_table(control, lds).row_count >= 8


def _records(values_by_scene: dict[int, list[float]]) -> EvalResult:
    records, index = [], 0
    for scene, values in values_by_scene.items():
        for value in values:
            records.append({"image_index": index, "scene_index": scene, "fg_ari": value})
            index += 1
    return EvalResult(records=records,
                      aggregates={"fg_ari": aggregate(r["fg_ari"] for r in records)})


def test_compare_pairs_images_and_takes_the_error_over_scenes():
    control = _records({0: [0.5, 0.5], 1: [0.5, 0.5], 2: [0.5, 0.5]})
    # per-scene mean differences 0.1, 0.2, 0.3 (the views of a scene differ, but are averaged)
    lds = _records({0: [0.55, 0.65], 1: [0.7, 0.7], 2: [0.9, 0.7]})
    row = compare(control, lds)["fg_ari"]
    assert row["delta"] == pytest.approx(0.2) and row["scenes"] == 3
    assert row["stderr"] == pytest.approx(0.1 / 3 ** 0.5)          # std 0.1 over 3 scenes
    assert row["clear"] is True and row["lds_better"] is True
    noisy = _records({0: [0.9, 0.9], 1: [0.3, 0.3], 2: [0.6, 0.6]})  # differences 0.4, -0.2, 0.1
    assert compare(control, noisy)["fg_ari"]["clear"] is False
    # runs scored on different images: no paired error
    other = _records({0: [0.5, 0.5], 1: [0.5, 0.5]})
    assert compare(control, other)["fg_ari"]["stderr"] is None
    assert compare(control, other)["fg_ari"]["clear"] is None


def test_evaluate_tiny_monet_runs_and_metrics_are_in_range():
    torch.manual_seed(0)
    cfg = MONetConfig(height=H, width=W, num_slots=4, latent_dim=4, unet_channels=(8, 8, 8),
                      unet_mlp_hidden=16, encoder_channels=(8, 8), encoder_hidden=16,
                      decoder_channels=(8, 8))
    result = evaluate(MONet(cfg), make_dataset(3), batch_size=2, progress=False)
    for name in ("miou", "miou_greedy", "fg_ari"):
        assert 0.0 <= result.mean(name) <= 1.0
    assert result.mean("miou_greedy") >= result.mean("miou") - 1e-12
    assert 0.0 <= result.mean("mse") <= 1.0 and -1.0 <= result.mean("sim") <= 1.0
    # MONet segments with its attention masks; the decoded masks are reported beside them,
    # and both are labelled in eval.json and in the table.
    assert result.meta["segmentation_sources"] == {"": "attention masks", "decoded_": "decoded masks"}
    assert 0.0 <= result.mean("decoded_miou") <= 1.0 and "decoded_dup_gt" in result.aggregates
    console = Console(record=True, width=160)
    console.print(result_table(result))
    text = console.export_text()
    assert "FG-ARI, attention masks" in text and "FG-ARI, decoded masks" in text
    oracle = evaluate(LabelOracle(), make_dataset(2), batch_size=2, progress=False)
    assert oracle.meta["segmentation_sources"] == {"": "decoded masks"}
    assert "decoded_miou" not in oracle.aggregates


def test_load_missing_or_corrupt_file_is_a_user_error(tmp_path):
    with pytest.raises(EvalFileError):
        EvalResult.load(tmp_path / "nope.json")
    bad = tmp_path / "eval.json"
    bad.write_text("{not json")
    with pytest.raises(EvalFileError):
        EvalResult.load(bad)
