"""experiments/side_by_side.py: the training step and curve rows the comparisons against public
code share (experiments/iodine_vs_public.py, experiments/mulmon_vs_public.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from common.errors import UserError

from lds.training.config import load_train_config
from lds.training.loop import learning_rate
from tests.test_monet import TINY_OVERRIDES, one_torch_thread, tiny_model  # noqa: F401 (fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from side_by_side import Trainee  # noqa: E402


class Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        labels = (self.images[i].mean(0) > 0.5).long()       # two "objects": dark and light
        return {"image": self.images[i], "label_map": labels, "image_index": i}


def _trainee(tmp_path, model, loss_of, **options) -> Trainee:
    cfg = load_train_config("monet", None, [*TINY_OVERRIDES, "optim.lr=1e-3", "optim.grad_clip=5"])
    return Trainee("ours", model, model, loss_of, cfg, tmp_path, 0, {"final": "mean"},
                   {"images_per_s": 2}, ("loss", "mse"), **options)


def test_steps_train_and_rows_hold_the_means_since_the_last_row(tmp_path):
    torch.manual_seed(0)
    images = torch.rand(4, 3, 16, 16)
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    trainee = _trainee(tmp_path, model, lambda x: (model({"image": x}).loss, {"extra": 2.0}))
    for step in range(2):
        trainee.step(step, 0, images[2 * step: 2 * step + 2])
    assert trainee.stopped is None and trainee.seconds > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    losses = [w["loss"] for w in trainee.window]
    trainee.record(2, Images(images), 4, 2, 0)
    row = json.loads((tmp_path / "ours_seed0.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 2 and row["final"] == "mean" and row["extra"] == 2.0
    assert abs(row["loss"] - sum(losses) / 2) < 1e-9 and row["images_per_s"] > 0
    assert row["lr"] == learning_rate(trainee.cfg, 2)
    assert 0.0 <= row["fg_ari"] <= 1.0 and row["mse"] > 0       # lds.evaluation's aggregates
    assert trainee.window == [] and model.training               # evaluation left train mode on


def test_a_non_finite_loss_stops_the_model_and_its_next_row_says_so(tmp_path):
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def loss_of(x):
        return model({"image": x}).loss * float("nan"), {}

    trainee = _trainee(tmp_path, model, loss_of)
    trainee.step(0, 0, torch.rand(2, 3, 16, 16))
    assert trainee.stopped.startswith("step 1: non-finite loss")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())   # no update
    trainee.step(1, 0, torch.rand(2, 3, 16, 16))                  # a stopped model is not run
    trainee.record(2, Images(torch.rand(2, 3, 16, 16)), 2, 2, 0)
    row = json.loads((tmp_path / "ours_seed0.jsonl").read_text())
    assert row["stopped"] == trainee.stopped and "mse" not in row


def test_gradients_a_forward_leaves_do_not_join_the_step(tmp_path):
    """zhixuan-lin/IODINE runs backward passes inside its forward: the step clears gradients
    after the forward, so the update equals that of the loss alone."""
    torch.manual_seed(0)
    image = torch.rand(2, 3, 16, 16)
    model = tiny_model()

    def loss_of(x):
        stray = sum(p.sum() for p in model.parameters()) * 100.0
        stray.backward()                                         # the forward's own backward
        return model({"image": x}).loss, {}

    _trainee(tmp_path, model, loss_of).step(0, 0, image)
    reference = tiny_model()
    _trainee(tmp_path, reference, lambda x: (reference({"image": x}).loss, {})).step(0, 0, image)
    assert all(torch.allclose(a, b) for a, b in zip(model.parameters(), reference.parameters()))


def test_train_alternating_rows_order_and_final_weights(tmp_path):
    """Rows at step 0, every eval_every steps and at the end; the step order alternates; the
    saved weights are the trained ones."""
    from safetensors.torch import load_file

    from side_by_side import train_alternating

    torch.manual_seed(0)
    images = torch.rand(6, 3, 16, 16)
    calls = []
    trainees = {}
    for who in ("ours", "theirs"):
        model = tiny_model()

        def loss_of(x, m=model, who=who):
            calls.append(who)
            return m({"image": x}).loss, {}

        trainee = _trainee(tmp_path, model, loss_of)
        trainee.who, trainee.path = who, tmp_path / f"{who}_seed0.jsonl"
        trainees[who] = trainee
    def batches(start):
        return ((images[2 * s: 2 * s + 2],) for s in range(start, 3))

    train_alternating(trainees, batches, 3, 2, Images(images), 4, 2, 0, tmp_path)
    assert calls == ["ours", "theirs", "theirs", "ours", "ours", "theirs"]
    for who, trainee in trainees.items():
        rows = [json.loads(line) for line in trainee.path.read_text().splitlines()]
        assert [r["step"] for r in rows] == [0, 2, 3] and all("fg_ari" in r for r in rows)
        saved = load_file(str(tmp_path / f"{who}_seed0_step3.safetensors"))
        assert all(torch.equal(saved[k], v) for k, v in trainee.model.state_dict().items())


def _pair(out: Path) -> dict:
    trainees = {}
    for who in ("ours", "theirs"):
        torch.manual_seed(0 if who == "ours" else 1)
        model = tiny_model()
        trainee = _trainee(out, model, lambda x, m=model: (m({"image": x}).loss, {}))
        trainee.who, trainee.path = who, out / f"{who}_seed0.jsonl"
        trainees[who] = trainee
    return trainees


def test_a_resumed_run_takes_the_steps_an_uninterrupted_one_takes(tmp_path):
    """Stopped after its evaluation at step 2 and resumed with more steps, a run ends with the
    same weights, optimiser moments and curve rows (but for the clocks) as one run straight
    through; a resume with other settings, or without a state, is refused in one line."""
    from side_by_side import state_path, train_alternating

    torch.manual_seed(0)
    images = torch.rand(8, 3, 16, 16)

    def batches(start):
        return ((images[2 * (s % 4): 2 * (s % 4) + 2],) for s in range(start, 10))

    def run(out, steps, resume=False, settings=None):
        out.mkdir(exist_ok=True)
        trainees = _pair(out)
        train_alternating(trainees, batches, steps, 2, Images(images), 4, 2, 0, out,
                          settings or {"lr": 1e-3}, resume)
        return trainees

    straight = run(tmp_path / "straight", 4)
    run(tmp_path / "split", 2)
    assert state_path(tmp_path / "split", 0).is_file()
    resumed = run(tmp_path / "split", 4, resume=True)
    clocks = {"train_seconds", "images_per_s"}
    for who in ("ours", "theirs"):
        a, b = straight[who], resumed[who]
        assert all(torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters()))
        moments = [a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]]
        assert moments[0].keys() == moments[1].keys() and moments[0]
        assert all(torch.equal(torch.as_tensor(value), torch.as_tensor(moments[1][i][key]))
                   for i in moments[0] for key, value in moments[0][i].items())
        rows = [[{k: v for k, v in json.loads(line).items() if k not in clocks}
                 for line in t.path.read_text().splitlines()] for t in (a, b)]
        assert [r["step"] for r in rows[1]] == [0, 2, 4] and rows[0] == rows[1]
    with pytest.raises(UserError, match="other settings: lr 0.001"):
        run(tmp_path / "split", 6, resume=True, settings={"lr": 3e-4})
    with pytest.raises(UserError, match="no saved state"):
        run(tmp_path / "fresh", 4, resume=True)


def test_their_iodine_per_pixel_wrapper_mixes_once_per_pixel():
    """``--theirs-likelihood pixel`` wraps the public IODINE's per-channel Gaussian
    log-likelihood; under their logsumexp over the slots it must give Eq. (1)'s per-pixel
    mixture, log sum_k m_k prod_c N(x_c; mu_kc, sigma^2), which differs from the per-channel one."""
    from iodine_vs_public import summed_over_channels

    def per_channel(x, loc, scale):                  # the shape of their gaussian_log_likelihood
        return torch.distributions.Normal(loc, scale).log_prob(x)

    torch.manual_seed(0)
    x, means = torch.rand(2, 1, 3, 4, 5), torch.rand(2, 3, 3, 4, 5)
    masks = torch.softmax(torch.randn(2, 3, 1, 4, 5), dim=1)
    theirs = torch.logsumexp(torch.log(masks) + summed_over_channels(per_channel)(x, means, 0.1), 1)
    joint = (masks[:, :, 0] * torch.distributions.Normal(means, 0.1).log_prob(x).sum(2).exp()).sum(1)
    assert theirs.shape == (2, 1, 4, 5)
    torch.testing.assert_close(theirs[:, 0], joint.log(), rtol=1e-5, atol=1e-4)
    published = torch.logsumexp(torch.log(masks) + per_channel(x, means, 0.1), 1).sum(1)
    assert (published - theirs[:, 0]).abs().max() > 0.1


def test_mulmon_ours_run_scores_each_checkpoint_and_refuses_other_settings(tmp_path, capsys):
    """experiments/mulmon_vs_public.py --ours-run: a study's `ldsrig train` run stands in for
    training ours again; each checkpoint is scored as ours is scored there (z sampled), with the
    run's mean training loss since the previous checkpoint, and a run trained with other
    settings than the arguments is refused with those settings named."""
    from typer.testing import CliRunner

    import mulmon_vs_public
    from cli import app
    from tests.test_mulmon import make_views_store

    store, run, out = tmp_path / "views.zarr", tmp_path / "run", tmp_path / "cmp"
    make_views_store(store)
    trained = CliRunner().invoke(app, [
        "train", "mulmon", "--data", str(store), "--out", str(run), "--steps", "2", "--no-progress",
        "model.height=32", "model.width=32", "model.num_slots=3", "model.num_iterations=2",
        "model.num_views=4", "model.max_observed=2",
        "model.likelihood=pixel", "optim.lr=2e-4", "optim.batch_size=2", "log.every=1",
        "log.checkpoint_every=1", "log.keep_checkpoints=0", "threads=1"])
    assert trained.exit_code == 0, trained.output + repr(trained.exception)
    args = ["--ours-run", str(run), "--train", str(store), "--val", str(store), "--out", str(out),
            "--views", "4", "--batch", "2", "--slots", "3", "--max-observed", "2", "--lr", "2e-4",
            "--likelihood", "pixel", "--steps", "2", "--val-scenes", "2", "--eval-batch", "2"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["mulmon_vs_public.py", *args])
        mulmon_vs_public.main()
    rows = [json.loads(line) for line in (out / "ours_seed0.jsonl").read_text().splitlines()]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert [r["loss"] for r in rows] == [logged[0]["loss"], logged[1]["loss"]]
    assert all(r["inference"] == "sampled z" and 0 <= r["fg_ari"] <= 1 and r["query_mse"] > 0
               for r in rows)
    assert rows[0]["eval_views"] == {"observed": 6, "query": 2, "scenes": 2}

    other = [a if a != "3" else "4" for a in args]          # --slots 4: not what the run had
    with pytest.MonkeyPatch.context() as patch, pytest.raises(UserError) as refused:
        patch.setattr(sys, "argv", ["mulmon_vs_public.py", *other])
        mulmon_vs_public.main()
    assert "model.num_slots 3 (here 4)" in str(refused.value)
