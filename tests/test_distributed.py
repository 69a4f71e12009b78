"""Data-parallel training and evaluation: two real gloo processes (torch.multiprocessing.spawn)
running the real loop, DDP and evaluation on a tiny store, checked against one process.

One spawn (imports dominate its cost) runs every two-process scenario and leaves its
artifacts in a temporary directory; the tests below compare them with one-process runs.

Exact comparisons need the model to be deterministic: each rank draws its own
reparameterisation noise (as it must: shared noise would correlate the ranks' samples), so a
two-rank run with sampling can only equal a one-process run in distribution. The comparison
runs therefore use MONet with z = the posterior mean (``_deterministic_monet``: the one
function that draws noise replaced by its mean); everything else — DDP, gloo, the sampler, the
optimiser, checkpoints — is the real code. The sampling run checks rank consistency instead.
"""

from __future__ import annotations

import json
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lds import distributed
from lds.training.checkpoint import list_checkpoints, load_checkpoint
from lds.training.loop import RankBatchSampler, StepBatchSampler
from tests.test_eval_cli import make_store
from tests.test_monet import TINY_OVERRIDES

WORLD = 2
GLOBAL_BATCH = 4
GAP_ARGS = dict(num_samples=6, max_images=5, chunk=3, batch_size=2, progress=False, seed=3)


def _deterministic_monet() -> None:
    import lds.models.monet as monet

    monet.reparameterize = lambda mean, logvar, sample: mean


def _cfg(store: Path, *extra: str):
    from lds.training.config import load_train_config

    overrides = [o for o in TINY_OVERRIDES if not o.startswith("optim.batch_size")]
    return load_train_config("monet", overrides=overrides + [
        # eps: RMSprop turns a gradient that is zero up to rounding (the mask-logit bias: a
        # shift shared by all slots cancels in the softmax) into a full +-lr/sqrt(1-alpha) step
        # whose sign is rounding noise; 1e-4 keeps such steps as small as their gradients.
        f"optim.batch_size={GLOBAL_BATCH}", "optim.lr=1e-3", "optim.eps=1e-4", "log.every=1",
        "log.tensorboard=false", "log.checkpoint_every=2", "log.keep_checkpoints=0",
        "lds.enabled=true", "threads=1", f"data={store}", *extra])


def _param_digest(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


class PoisonRank1:
    """The store's images; rank 1's images are NaN from its second step on."""

    def __init__(self, store: Path, rank: int):
        from datasets.torch_data import ImageDataset

        self.inner, self.rank, self.reads = ImageDataset(store), rank, 0

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.inner[i])
        self.reads += 1
        if self.rank == 1 and self.reads > 1 + GLOBAL_BATCH // WORLD:   # 1: train()'s probe
            item["image"] = item["image"].clone()
            item["image"][0, 0, 0] = float("nan")
        return item


def _scenarios(rank: int, root: Path) -> dict:
    from lds.cli.evaluate import evaluate_run
    from lds.training.loop import NonFiniteLossError, train

    store, report = root / "store", {}
    # 1. sampling on: rank 1 names another run directory, which must stay unused
    result = train(_cfg(store, "optim.steps=2"), root / ("sampled" if rank == 0 else "sampled_r1"),
                   progress=False)
    report["sampled_checkpoint"] = str(result.checkpoint)
    report["sampled_last_values"] = result.last_values
    # 2. NaN on rank 1 only: both ranks must stop, at the same step
    try:
        train(_cfg(store, "optim.steps=4"), root / "nan", dataset=PoisonRank1(store, rank),
              progress=False)
        report["nan"] = "no error"
    except NonFiniteLossError as exc:
        report["nan"] = str(exc)
    # 3. a global batch the ranks cannot split: a clear error before anything is written
    try:
        train(_cfg(store, "optim.steps=1", "optim.batch_size=3"), root / "odd", progress=False)
        report["odd"] = "no error"
    except distributed.DistributedError as exc:
        report["odd"] = str(exc)
    # 4. deterministic MONet from here on
    _deterministic_monet()
    train(_cfg(store, "optim.steps=2"), root / "ddp_2steps", progress=False)
    train(_cfg(store, "optim.steps=4"), root / "one_then_two", resume=True, progress=False)
    # 5. sharded evaluation through the CLI path; rank 1's --out must stay unused
    evaluate_run(root / "ddp_2steps", store, out=root / ("eval_ddp.json" if rank == 0 else
                                                         "eval_r1.json"),
                 batch_size=2, progress=False)
    from lds.evaluation.gap import gap_for_run

    gap_for_run(root / "ddp_2steps", store, out=root / ("gap_ddp.json" if rank == 0 else
                                                        "gap_r1.json"), **GAP_ARGS)
    return report


def _worker(rank: int, root: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        report = _scenarios(rank, Path(root))
    except BaseException:
        report = {"error": traceback.format_exc()}
    finally:
        dist.destroy_process_group()
    (Path(root) / f"report_{rank}.json").write_text(json.dumps(report))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-process runs, the two-process scenarios, then the one-process follow-ups."""
    from lds.training.loop import train

    root = tmp_path_factory.mktemp("ddp")
    make_store(root / "store", scenes=3, views=2)         # 6 images: batches straddle epochs
    torch.set_num_threads(1)
    reference_sampled = train(_cfg(root / "store", "optim.steps=2"), root / "one_sampled",
                              progress=False)
    import lds.models.monet as monet

    original = monet.reparameterize
    try:
        _deterministic_monet()
        train(_cfg(root / "store", "optim.steps=4"), root / "one_4steps", progress=False)
        train(_cfg(root / "store", "optim.steps=2"), root / "one_then_two", progress=False)
        # the same one-process checkpoint, continued by one process (the 1 -> 2 reference)
        _copy_run(root / "one_then_two", root / "one_then_one")
        train(_cfg(root / "store", "optim.steps=4"), root / "one_then_one", resume=True,
              progress=False)
        mp.spawn(_worker, args=(str(root), _free_port()), nprocs=WORLD, join=True)
        reports = [json.loads((root / f"report_{r}.json").read_text()) for r in range(WORLD)]
        for report in reports:
            assert "error" not in report, report.get("error")
        # 2 -> 1 process: resume the two-process run alone, and a copy of it the same way
        _copy_run(root / "ddp_2steps", root / "ddp_2steps_copy")
        for name in ("ddp_2steps", "ddp_2steps_copy"):
            train(_cfg(root / "store", "optim.steps=4"), root / name, resume=True, progress=False)
        from lds.evaluation import evaluate
        from lds.training.runs import load_run
        from datasets.torch_data import ImageDataset

        model, _ = load_run(root / "ddp_2steps", step=2)
        single_eval = evaluate(model, ImageDataset(root / "store"), batch_size=2, progress=False)
        from lds.evaluation.gap import gap_for_run

        single_gap = _gap_at_step_2(root, gap_for_run)
    finally:
        monet.reparameterize = original
    return {"root": root, "reports": reports, "single_eval": single_eval, "single_gap": single_gap,
            "reference_sampled": reference_sampled}


def _copy_run(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst)


def _gap_at_step_2(root: Path, gap_for_run) -> dict:
    """The one-process gap under the step-2 checkpoint (the run has since been resumed to 4):
    a copy of the run holding only that checkpoint."""
    import shutil

    copy = root / "gap_single_run"
    shutil.copytree(root / "ddp_2steps", copy)
    for path in (copy / "checkpoints").iterdir():
        if "0000002" not in path.name:
            path.unlink()
    return gap_for_run(copy, root / "store", out=root / "gap_single.json", **GAP_ARGS)


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints", step).model_state


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_rank_sampler_splits_each_global_batch():
    full = list(StepBatchSampler(7, 4, seed=3, start_step=2, end_step=9))
    parts = [list(RankBatchSampler(7, 4, seed=3, start_step=2, end_step=9, rank=r, world_size=2))
             for r in range(2)]
    assert [a + b for a, b in zip(*parts)] == full           # together: the one-process batches
    assert all(len(batch) == 2 for part in parts for batch in part)
    with pytest.raises(ValueError, match="divisible"):
        RankBatchSampler(7, 4, 0, 0, 1, rank=0, world_size=3)


def test_shard_batches_single_process_is_everything():
    assert distributed.shard_batches(5, 2) == [(0, [0, 1]), (1, [2, 3]), (2, [4])]
    assert distributed.gather_batches([(1, "b"), (0, "a")]) == ["a", "b"]
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.on_main(lambda: 7) == 7
    assert distributed.choose_backend("cpu") == "gloo"


def test_two_processes_equal_one_with_the_global_batch(runs):
    root = runs["root"]
    _assert_close(_weights(root / "ddp_2steps", 2), _weights(root / "one_4steps", 2))
    # the optimiser state too (RMSprop's square averages), so a resume continues identically
    a = load_checkpoint(root / "ddp_2steps" / "checkpoints", 2).optimizer_state["state"]
    b = load_checkpoint(root / "one_4steps" / "checkpoints", 2).optimizer_state["state"]
    for index in b:
        torch.testing.assert_close(a[index]["square_avg"], b[index]["square_avg"],
                                   rtol=1e-4, atol=1e-9)


def test_resume_onto_another_world_size(runs):
    """A checkpoint carries everything a run needs whatever the world size. 2 -> 1: the
    two-process checkpoint resumed alone continues bit for bit as any one-process resume of it.
    1 -> 2: two DDP steps from a one-process checkpoint equal two one-process steps from it, to
    rounding. (Comparing four-step trajectories instead would test RMSprop's amplification of
    summation-order rounding, which differs between CPU kernel families, not the resume.)"""
    root = runs["root"]
    resumed, copy = _weights(root / "ddp_2steps", 4), _weights(root / "ddp_2steps_copy", 4)
    assert all(torch.equal(resumed[k], copy[k]) for k in copy)      # 2 processes -> 1
    _assert_close(_weights(root / "one_then_two", 4), _weights(root / "one_then_one", 4))  # 1 -> 2
    assert load_checkpoint(root / "one_then_two" / "checkpoints", 4).state["world_size"] == 2
    assert load_checkpoint(root / "ddp_2steps" / "checkpoints", 4).state["world_size"] == 1


def test_rank_zero_alone_writes_the_run(runs):
    root, reports = runs["root"], runs["reports"]
    assert not (root / "sampled_r1").exists()                 # rank 1's own name is never used
    assert list_checkpoints(root / "sampled" / "checkpoints") == [2]
    assert {r["sampled_checkpoint"] for r in reports} == {
        str(root / "sampled" / "checkpoints" / "step_0000002.safetensors")}
    rows = [json.loads(line) for line in (root / "sampled" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]            # one row per step, not one per rank
    # the logged values are the mean over the ranks, the same on both (the speed is per rank)
    values = [{k: v for k, v in r["sampled_last_values"].items() if k != "images_per_s"}
              for r in reports]
    assert values[0] == values[1] and "loss" in values[0]
    assert sorted(p.name for p in (root / "sampled").iterdir()) == [
        ".train.lock", "checkpoints", "config.yaml", "metrics.jsonl"]


def test_sampling_noise_differs_per_rank_but_replicas_stay_equal(runs):
    """With sampling on, the two-rank run is not the one-process run (each rank draws its own
    noise), yet its single checkpoint holds the replicas' common parameters: DDP kept them equal
    (checked by the resume tests, which load it into any world size)."""
    root = runs["root"]
    two = _weights(root / "sampled", 2)
    one = _weights(root / "one_sampled", 2)
    assert any(not torch.allclose(two[k], one[k], rtol=1e-6, atol=1e-8) for k in one)
    assert all(torch.isfinite(v).all() for v in two.values())


def test_nan_on_one_rank_stops_every_rank(runs):
    root, reports = runs["root"], runs["reports"]
    messages = [r["nan"] for r in reports]
    assert all(m.startswith("non-finite") for m in messages), messages
    # rank 1 saw the NaN loss, rank 0 the NaN it spread through the gradient all-reduce
    assert "non-finite loss at step 2" in messages[1]
    assert "at step 2 " in messages[0]
    # the pre-failure state was saved once, by rank 0, and no update was applied
    assert list_checkpoints(root / "nan" / "checkpoints") == [1]


def test_sharded_evaluation_equals_one_process(runs):
    root, single = runs["root"], runs["single_eval"]
    assert not (root / "eval_r1.json").exists()
    sharded = json.loads((root / "eval_ddp.json").read_text())
    assert sharded["meta"]["num_images"] == len(single.records) == 6
    key = lambda r: r["image_index"]  # noqa: E731
    pairs = list(zip(sorted(sharded["records"], key=key), sorted(single.records, key=key)))
    assert [a["image_index"] for a, _ in pairs] == list(range(6))
    for a, b in pairs:
        assert a.keys() == b.keys()
        for name in a:
            if isinstance(b[name], float):
                assert a[name] == pytest.approx(b[name], rel=1e-6, abs=1e-9), name
            else:
                assert a[name] == b[name], name
    for name, agg in single.aggregates.items():
        assert sharded["aggregates"][name]["n"] == agg["n"]
        assert sharded["aggregates"][name]["mean"] == pytest.approx(agg["mean"])


def test_sharded_gap_equals_one_process(runs):
    root, single = runs["root"], runs["single_gap"]
    assert not (root / "gap_r1.json").exists()
    sharded = json.loads((root / "gap_ddp.json").read_text())
    assert [r["image_index"] for r in sharded["records"]] == list(range(5))
    assert len(single["records"]) == 5
    for a, b in zip(sharded["records"], single["records"]):
        assert a.keys() == b.keys()
        for name in a:
            assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-6), name
    assert sharded["aggregates"]["gap"]["mean"] == pytest.approx(single["aggregates"]["gap"]["mean"])


def test_ldsrig_train_and_eval_under_torchrun(tmp_path):
    """The commands unchanged under `python -m torch.distributed.run --nproc-per-node 2`."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    make_store(tmp_path / "store", scenes=2, views=2)
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("optim.batch_size")]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc-per-node=2", str(root / "cli.py")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = subprocess.run(launch + ["train", "monet", "--data", str(tmp_path / "store"),
                                     "--out", str(tmp_path / "run"), "--steps", "2",
                                     "--no-progress", "optim.batch_size=4",
                                     "log.tensorboard=false", *overrides],
                           capture_output=True, text=True, cwd=root, env=env)
    assert train.returncode == 0, train.stderr[-2000:]
    assert train.stdout.count("trained monet to step 2") == 1       # one summary, rank 0's
    assert list_checkpoints(tmp_path / "run" / "checkpoints") == [2]
    assert load_checkpoint(tmp_path / "run" / "checkpoints").state["world_size"] == 2


def test_a_global_batch_the_ranks_cannot_split_is_refused(runs):
    root, reports = runs["root"], runs["reports"]
    assert all("not divisible by the 2 processes" in r["odd"] for r in reports)
    assert not (root / "odd").exists()


def test_gpu_flags_are_validated_on_cpu(tmp_path, monkeypatch):
    from common.errors import ConfigError
    from lds.training.config import load_train_config
    from lds.training.loop import train

    assert load_train_config("monet", overrides=["amp=off"]).amp == "off"   # YAML's off == false
    assert load_train_config("monet", overrides=["amp=bf16"]).amp == "bf16"
    with pytest.raises(ConfigError, match="amp"):
        load_train_config("monet", overrides=["amp=fp16"])
    make_store(tmp_path / "store", scenes=1, views=2)
    # amp=bf16 runs on CPUs with native bf16 (tests/test_amp_cpu.py); elsewhere it is refused
    monkeypatch.setattr("lds.training.loop.cpu_has_native_bf16", lambda: False)
    with pytest.raises(ConfigError, match="native bfloat16"):
        train(_cfg(tmp_path / "store", "amp=bf16"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
