"""The training loop shared by every model: ``train(cfg, run_dir)``.

Determinism and exact resume (on CPU): the parameters are initialised from ``cfg.seed``; the
data order is a fresh permutation per epoch drawn from (seed, epoch), so batch ``s`` is a pure
function of (seed, s); the model's own sampling (the reparameterisation noise) draws from the
global torch RNG reseeded from (seed, s) before step ``s``. A run resumed from checkpoint N
therefore replays steps N+1.. exactly as an uninterrupted run would (tests/test_train.py checks
the parameters bit for bit).

Every step: the output contract is checked (``ModelOutput.check``), the loss and the gradient
norm must be finite (else :class:`NonFiniteLossError`, with the parameters before that step saved
as a checkpoint and no update applied), gradients are clipped to ``optim.grad_clip``.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from common import locks
from common.config import save_config, to_dict
from lds import distributed
from common.errors import ConfigError, UserError
from lds.data import open_store_dataset
from lds.models import build_model
from lds.training.checkpoint import (list_checkpoints, load_checkpoint, prune_checkpoints, restore,
                                     save_checkpoint)
from lds.training.config import TrainConfig
from lds.training.logging import RunLogger
from lds.training.objective import prior_per_iteration, training_objective
from lds.training.runs import CHECKPOINT_DIR, CONFIG_NAME, RunError, read_run_config

TRAIN_LOCK = ".train.lock"
# Model settings that change how fast a step runs or how much memory it takes, not the model:
# a resume may change them. Everything else in model.*, the LDS section, optim.name and the
# seed defines the run.
RUNTIME_MODEL_FIELDS = frozenset({"channels_last", "fused_broadcast", "fused_decoder",
                                  "grad_checkpoint", "checkpoint_iterations"})

_SEED_STRIDE = 1_000_003  # a prime: (seed, index) pairs map to distinct generator seeds


class NonFiniteLossError(UserError):
    """Training produced a NaN/inf loss or gradient; the run stopped before applying it."""


def step_seed(seed: int, step: int) -> int:
    return (seed * _SEED_STRIDE + step) % (2**63 - 1)


class StepBatchSampler(Sampler[list[int]]):
    """Batches ``start_step .. end_step - 1`` of an endless stream of per-epoch permutations.

    Epoch e is ``randperm(n)`` from a generator seeded with (seed, e); batch s takes positions
    s*B .. s*B+B-1 of the concatenated epochs (batches may straddle an epoch boundary, and a
    dataset smaller than a batch simply spans several epochs). Stateless, so resuming at any
    step gives the same batches.

    ``item_seeds``: yield ``(index, seed)`` pairs instead of indices, the seed a pure function
    of (seed, step, position in the global batch), for datasets that draw something per item
    (``SceneViewsDataset`` picks views): their draws then replay exactly on resume, whatever
    the number of workers or processes.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int, end_step: int,
                 item_seeds: bool = False):
        if num_items < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_step, self.end_step = start_step, end_step
        self.item_seeds = item_seeds

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def _epoch(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(step_seed(self.seed + 7919, epoch))
        return torch.randperm(self.num_items, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        position = self.start_step * self.batch_size
        epoch, offset = divmod(position, self.num_items)
        order = self._epoch(epoch)
        for step in range(self.start_step, self.end_step):
            batch = []
            while len(batch) < self.batch_size:
                take = min(self.batch_size - len(batch), self.num_items - offset)
                batch.extend(order[offset: offset + take].tolist())
                offset += take
                if offset == self.num_items:
                    epoch, offset = epoch + 1, 0
                    order = self._epoch(epoch)
            if self.item_seeds:
                base = step_seed(self.seed + 104729, step) * self.batch_size
                batch = [(index, (base + j) % (2**63 - 1)) for j, index in enumerate(batch)]
            yield batch


class RankBatchSampler(StepBatchSampler):
    """Rank ``rank``'s slice of each global batch of :class:`StepBatchSampler`.

    With N processes and a global batch of N*b, rank r takes positions r*b .. r*b+b-1 of every
    global batch, so together the ranks see exactly the images one process with batch N*b
    would (each epoch's permutation is still covered once: no image twice per epoch), and the
    order stays a pure function of (seed, step): resuming onto another world size replays the
    same global batches, split differently.
    """

    def __init__(self, num_items: int, global_batch: int, seed: int, start_step: int,
                 end_step: int, rank: int = 0, world_size: int = 1, item_seeds: bool = False):
        super().__init__(num_items, global_batch, seed, start_step, end_step, item_seeds)
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} ranks")
        self.per_rank = global_batch // world_size
        self.first = rank * self.per_rank

    def __iter__(self) -> Iterator[list[int]]:
        for batch in super().__iter__():
            yield batch[self.first: self.first + self.per_rank]


class KeyCollate:
    """Stack only the keys the model reads (others, e.g. ragged amodal masks, are skipped)."""

    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        missing = [k for k in self.keys if k not in items[0]]
        if missing:
            raise UserError(f"the dataset items have no {missing}; the model needs {list(self.keys)}")
        return {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in self.keys}


def learning_rate(cfg: TrainConfig, step: int) -> float:
    lr = cfg.optim.lr
    if cfg.optim.schedule == "gqn":
        return max(0.1 * lr + 0.9 * lr * (1.0 - step / 1e6), 0.1 * lr)
    return lr


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=o.lr, alpha=o.alpha, eps=o.eps)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, eps=o.eps)
    raise ConfigError(f"unknown optimiser {o.name!r}")


def keep_freed_memory() -> None:
    """Stop glibc handing large freed blocks back to the kernel after every step.

    A MONet step at batch 40 allocates and frees gigabytes of activations; by default each large
    tensor is a fresh mmap whose pages the kernel zeroes on first touch, which cost as much
    system time as the convolutions themselves here. Keeping the heap (no mmap for large
    blocks, no trimming) makes steady-state steps reuse warm memory. Linux/glibc only; a no-op
    elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**30 * 16)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX-BF16 or AVX512-BF16) through oneDNN.

    On x86 torch's own ``mkldnn._is_mkldnn_bf16_supported()`` also says yes for plain AVX512,
    where oneDNN emulates bf16 with fp32 arithmetic plus conversions: slower than fp32, so the
    instruction-set flags decide there.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    capabilities = torch.cpu.get_capabilities()
    if capabilities.get("architecture") == "x86_64":
        return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_amp_supported(amp: str, device: torch.device) -> None:
    """``amp=bf16`` needs a CUDA device or a CPU with native bf16 (docs/training.md)."""
    if amp != "bf16":
        raise ConfigError(f"unknown amp mode {amp!r}; use off or bf16")
    if device.type == "cuda":
        return
    if device.type != "cpu":
        raise ConfigError(f"amp=bf16 runs on CUDA or the CPU, not on {device} (set amp=off)")
    if not cpu_has_native_bf16():
        raise ConfigError(
            "amp=bf16 on the CPU needs native bfloat16 instructions (AMX-BF16 or AVX512-BF16, "
            "with oneDNN), which this CPU does not report; without them bf16 is emulated and "
            "slower than fp32. Set amp=off.")


def load_initial_parameters(model: torch.nn.Module, path: str | Path) -> None:
    """``init_from``: the model's parameters from a safetensors file (no pickle), all or nothing."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"init_from: {path} does not exist")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"init_from: {path} is not a readable safetensors file ({exc})") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ConfigError(f"init_from: {path} does not fit this model (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}, other shapes {wrong[:3]}); check model.*")
    model.load_state_dict(state)


# A checkpoint whose parameter norm grew by more than this factor since the one before is taken
# as diverging (on a NaN stop the weights are often finite but orders of magnitude too large).
DIVERGENCE_GROWTH = 1.5


def set_aside_checkpoints_after(ckpt_dir: Path, step: int) -> None:
    """``--from-step``: the checkpoints after ``step`` move to a folder of their own, so the
    run continues from ``step`` and nothing that was written is lost."""
    steps = list_checkpoints(ckpt_dir)
    if step not in steps:
        raise RunError(f"--from-step {step}: no checkpoint for that step in {ckpt_dir}; have {steps}")
    later = [s for s in steps if s > step]
    if not later:
        return
    aside = ckpt_dir / f"after_{step:07d}_{time.strftime('%Y%m%dT%H%M%S')}"
    aside.mkdir()
    for s in later:
        for name in (f"state_{s:07d}.json", f"step_{s:07d}.safetensors", f"optim_{s:07d}.safetensors"):
            if (ckpt_dir / name).exists():     # the JSON first: the rest is no longer "complete"
                (ckpt_dir / name).rename(aside / name)


def healthy_checkpoint(ckpt_dir: Path) -> int:
    """The latest checkpoint step whose parameter norm had not jumped from the one before it
    (the first checkpoint counts as healthy; checkpoints saved before norms were recorded count
    as healthy too)."""
    import json

    steps = list_checkpoints(ckpt_dir)
    norms = []
    for step in steps:
        try:
            state = json.loads((ckpt_dir / f"state_{step:07d}.json").read_text())
            norms.append(float(state.get("param_norm", "nan")))
        except (OSError, ValueError, TypeError):
            norms.append(math.nan)
    healthy = steps[0]
    for k in range(1, len(steps)):
        before, now = norms[k - 1], norms[k]
        if math.isfinite(now) and (not math.isfinite(before) or now <= DIVERGENCE_GROWTH * before):
            healthy = steps[k]
        else:
            break
    return healthy


def check_resume_settings(run_dir: Path, cfg: TrainConfig) -> None:
    """Refuse a resume that would change what the run is (``--resume --lds`` on a control run,
    another model, architecture, optimiser or seed): the checkpoints and logs would describe two
    different runs. Steps, logging, validation, threads, device and the learning rate may change."""
    # Read as every other reader reads it: keys the run's config lacks (added to the config
    # after the run was made) take their defaults, which are the behaviour from before them,
    # and keys since removed are dropped.
    saved = to_dict(read_run_config(run_dir))
    now = to_dict(cfg)
    changed = []

    def compare(key: str, before, after) -> None:
        if before != after:
            changed.append(f"{key} {before!r} -> {after!r}")

    model_before, model_now = saved["model"], now["model"]
    for key in sorted(set(model_before) | set(model_now)):
        if key not in RUNTIME_MODEL_FIELDS:
            compare(f"model.{key}", model_before.get(key), model_now.get(key))
    lds_before, lds_now = saved["lds"], now["lds"]
    compare("lds.enabled", lds_before["enabled"], lds_now["enabled"])
    if lds_now["enabled"] or lds_before["enabled"]:
        for key in ("weight", "sigma", "latents"):
            compare(f"lds.{key}", lds_before[key], lds_now[key])
    compare("optim.name", saved["optim"]["name"], now["optim"]["name"])
    compare("seed", saved["seed"], now["seed"])
    if changed:
        raise RunError(f"--resume would change what {run_dir} is ({'; '.join(changed)}); these "
                       "settings define a run: start a new run with --out instead")


@dataclass
class TrainResult:
    run_dir: Path
    step: int                       # completed gradient steps
    checkpoint: Path | None         # the last checkpoint written
    last_values: dict[str, float]   # the last logged row
    stopped_by_time_limit: bool = False


def _prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / CONFIG_NAME).is_file():
            raise RunError(f"cannot resume: {run_dir} is not a training run (no {CONFIG_NAME})")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} already exists and is not empty; pass --resume to continue "
                       f"that run, or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)


def _format_terms(values: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in values.items())


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int, completed: int, description: str):
    if not enabled:
        yield lambda advance, text: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), TextColumn("{task.fields[terms]}"),
                        console=Console(stderr=True), transient=False)
    with progress:
        task = progress.add_task(description, total=total, completed=completed, terms="")
        yield lambda advance, text: progress.update(task, advance=advance, terms=text)


def train(cfg: TrainConfig, run_dir: str | Path, *, dataset: Dataset | None = None,
          resume: bool = False, progress: bool = True,
          validator: Callable[[torch.nn.Module], dict[str, float]] | None = None,
          resume_step: int | None = None) -> TrainResult:
    """Train ``cfg.model`` for ``cfg.optim.steps`` steps in total, writing the run to ``run_dir``.

    ``dataset``: any map-style dataset of dicts holding the model's inputs (default: the scene
    store ``cfg.data`` through ``datasets.torch_data.ImageDataset``). ``resume``: continue from
    the latest checkpoint in ``run_dir`` (or from ``resume_step``: the later checkpoints are
    moved aside to ``checkpoints/after_<step>_<time>/``, not deleted) up to ``cfg.optim.steps``.

    Under ``torchrun`` (or inside an initialised process group) this is data-parallel training
    (lds/distributed.py, docs/distributed.md): ``optim.batch_size`` is the global batch, each
    rank takes its slice of every global batch, gradients are averaged by
    DistributedDataParallel, and rank 0 alone writes the config, logs and checkpoints.

    ``validator``: called with the model (in eval mode) at step 0, every ``cfg.validate.every``
    steps and at the end; its values go to validation.jsonl and TensorBoard ``val/``. The
    evaluation layer builds it from ``cfg.validate`` (lds.evaluation.make_validator): training
    does not import evaluation. It runs on rank 0 and never touches the training RNG streams.
    """
    with distributed.session(cfg.device):
        return _train(cfg, run_dir, dataset=dataset, resume=resume, progress=progress,
                      validator=validator, resume_step=resume_step)


def _train(cfg: TrainConfig, run_dir: str | Path, *, dataset: Dataset | None,
           resume: bool, progress: bool, validator=None, resume_step: int | None = None) -> TrainResult:
    # Every rank writes into rank 0's run directory (a default name holds a timestamp).
    run_dir = Path(distributed.broadcast_object(str(run_dir)))
    rank, world_size, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    keep_freed_memory()
    device = distributed.local_device(cfg.device)
    if cfg.amp != "off":
        check_amp_supported(cfg.amp, device)
    distributed.split_global_batch(cfg.optim.batch_size)    # fails before the run dir exists

    if dataset is None:
        dataset = open_store_dataset(cfg.data, cfg.model)
    if len(dataset) == 0:
        raise ConfigError(f"the training data {cfg.data or '(given dataset)'} holds no images")
    probe = dataset[0]["image"]
    if tuple(probe.shape[-2:]) != (cfg.model.height, cfg.model.width):
        raise ConfigError(
            f"the images are {probe.shape[-2]}x{probe.shape[-1]} but the model is configured for "
            f"{cfg.model.height}x{cfg.model.width}; set model.height and model.width (and "
            f"model.unet_channels: one block per halving down to 4x4)")

    # only once the data is known to be usable; rank 0's verdict reaches every rank
    distributed.on_main(lambda: _prepare_run_dir(run_dir, resume))
    # One trainer per run directory (a second --resume would interleave logs and checkpoints);
    # rank 0 holds the lock until the run ends.
    lock = distributed.on_main(lambda: locks.acquire(run_dir / TRAIN_LOCK, f"run {run_dir}", RunError))
    try:
        return _train_locked(cfg, run_dir, dataset, resume, progress, validator, rank,
                             world_size, main, device, resume_step)
    finally:
        if main:
            locks.release(lock)


def _train_locked(cfg: TrainConfig, run_dir: Path, dataset, resume: bool, progress: bool,
                  validator, rank: int, world_size: int, main: bool, device,
                  resume_step: int | None) -> TrainResult:
    if resume:
        distributed.on_main(lambda: check_resume_settings(run_dir, cfg))
        if resume_step is not None:
            distributed.on_main(lambda: set_aside_checkpoints_after(run_dir / CHECKPOINT_DIR,
                                                                    resume_step))

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, cfg.model).to(device)
    model.train()
    optimizer = make_optimizer(cfg, model.parameters())
    ckpt_dir = run_dir / CHECKPOINT_DIR
    start_step = 0
    if cfg.init_from and not resume:
        load_initial_parameters(model, cfg.init_from)
    if resume:
        checkpoint = load_checkpoint(ckpt_dir, resume_step, map_location=device)
        restore(checkpoint, model, optimizer)
        start_step = checkpoint.step
    # Paths as absolute paths, so `--resume` works from any working directory.
    for section, key in ((cfg, "data"), (cfg.validate, "data"), (cfg, "init_from")):
        if getattr(section, key):
            setattr(section, key, str(Path(getattr(section, key)).resolve()))
    distributed.on_main(lambda: save_config(cfg, run_dir / CONFIG_NAME))
    end_step = cfg.optim.steps
    wrapped = model
    if world_size > 1:
        # Parameters start equal (same seed or the same checkpoint on every rank; DDP also
        # broadcasts rank 0's); gradients are averaged over the ranks during backward.
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(wrapped) if cfg.compile else wrapped

    # optim.batch_size is the global batch (the paper's); each rank computes its share of it.
    batch_size, num_slots = cfg.optim.batch_size, model.num_slots
    local_batch = distributed.split_global_batch(batch_size)
    height, width = cfg.model.height, cfg.model.width
    loader = DataLoader(
        dataset,
        batch_sampler=RankBatchSampler(len(dataset), batch_size, cfg.seed, start_step, end_step,
                                       rank, world_size,
                                       item_seeds=getattr(dataset, "takes_item_seeds", False)),
        collate_fn=KeyCollate(tuple(model.input_keys)),
        num_workers=cfg.workers,
        persistent_workers=False,
        pin_memory=cfg.pin_memory and device.type == "cuda",
    )
    # The forward (MulMON's and IODINE's refinement gradients included) runs under autocast;
    # the parameters, their gradients and the optimiser state stay fp32.
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.amp == "bf16"
                else contextlib.nullcontext())
    # Each rank draws its own reparameterisation noise (rank 0's equals a one-process run's).
    rank_seed = cfg.seed + rank * _SEED_STRIDE
    params = [p for p in model.parameters() if p.requires_grad]
    last_checkpoint: Path | None = None
    last_values: dict[str, float] = {}
    window: dict[str, float] = {}
    window_steps, window_start = 0, time.perf_counter()

    def checkpoint_now(step: int, prune: bool = True) -> Path:
        def write() -> Path:
            # the parameter norm lets a NaN stop tell a healthy checkpoint from a diverging one
            norm = float(torch.sqrt(sum(p.detach().double().pow(2).sum() for p in params)))
            path = save_checkpoint(ckpt_dir, step, model, optimizer,
                                   {"seed": cfg.seed, "model": cfg.model.name,
                                    "world_size": world_size, "param_norm": norm})
            if prune:
                prune_checkpoints(ckpt_dir, cfg.log.keep_checkpoints)
            return path
        return distributed.on_main(write)     # rank 0 writes; the others wait for its path

    description = f"{cfg.model.name}{'+LDS' if cfg.lds.enabled else ''}"
    logger = (RunLogger(run_dir, cfg.log.tensorboard, resume_step=start_step if resume else None)
              if main else contextlib.nullcontext())
    validate_every = cfg.validate.every if validator is not None else 0

    def validate_now(step: int) -> None:
        def run() -> None:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                values = validator(model)
            model.train()
            log.log_validation(step, values)
        distributed.on_main(run)

    # time_limit_minutes: stop cleanly (log, checkpoint, validation) once this much wall time
    # has gone, e.g. inside a cluster job's limit; --resume continues.
    time_limit = cfg.time_limit_minutes * 60.0 if cfg.time_limit_minutes > 0 else math.inf
    started = time.perf_counter()
    with logger as log, _progress_bar(progress and main, end_step, start_step, description) as advance:
        step = start_step
        if validate_every and not resume and step < end_step:
            validate_now(0)
            window_start = time.perf_counter()
        for batch in loader:
            torch.manual_seed(step_seed(rank_seed, step))
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                out = forward(batch)
            # multi-view models flatten views into the batch axis (B = scenes * views)
            out_rows = model.output_rows(batch)
            out.check(out_rows, num_slots, height, width)
            # LDS is applied here, once, to the latents every model returns (objective.py)
            objective, prior = training_objective(out, cfg.lds)
            terms = {k: float(v.detach()) for k, v in out.loss_terms.items()}
            terms["lds"] = float(prior.detach())
            # IODINE and MulMON: the prior at each refinement iteration, logged (a fixed set of
            # names per model, so windows and ranks average them like every other term)
            by_iteration = prior_per_iteration(out, cfg.lds)
            iteration_terms = {} if by_iteration is None else {
                f"lds_iter{i}": float(v) for i, v in enumerate(by_iteration)}
            loss = float(objective.detach())
            bad = not math.isfinite(loss)
            grad_norm = math.nan
            # Under DDP every rank runs backward even after a bad loss (a rank that skipped it
            # would leave the others waiting in the gradient all-reduce); NaNs spread through
            # the averaged gradients, and any_rank makes the stop decision the same everywhere.
            if not bad or world_size > 1:
                objective.float().backward()
                clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
                bad = bad or not math.isfinite(grad_norm)
            bad = distributed.any_rank(bad)
            if bad:
                # The update was not applied: the parameters are still those after `step` steps.
                optimizer.zero_grad(set_to_none=True)
                # kept, but no older checkpoint is pruned for it: the state just before a NaN is
                # often already diverging, and the healthy ones are what a restart needs
                last_checkpoint = checkpoint_now(step, prune=False)
                what = "loss" if not math.isfinite(loss) else "gradient norm"
                healthy = distributed.on_main(lambda: healthy_checkpoint(ckpt_dir))
                raise NonFiniteLossError(
                    f"non-finite {what} at step {step + 1} (loss {loss:.4g}; {_format_terms(terms)}; "
                    f"grad norm {grad_norm:.4g}); training stopped before applying it and saved "
                    f"the state before it as {last_checkpoint.name}. The latest checkpoint before "
                    f"the parameters began to grow is step {healthy}: resume from it with a lower "
                    f"learning rate, e.g. `ldsrig train {cfg.model.name} --out {run_dir} --resume "
                    f"--from-step {healthy} optim.lr={cfg.optim.lr / 10:.3g}` (or check the data).")
            optimizer.step()
            step += 1

            values = {"loss": loss, **terms, **iteration_terms, "grad_norm": grad_norm}
            for k, v in values.items():
                window[k] = window.get(k, 0.0) + v
            window_steps += 1
            advance(1, _format_terms({"loss": loss, **terms}))
            # every rank stops at the same step (DDP)
            out_of_time = (time_limit < math.inf and
                           distributed.any_rank(time.perf_counter() - started > time_limit))
            last = step == end_step or out_of_time
            if step % cfg.log.every == 0 or last:
                elapsed = time.perf_counter() - window_start
                # logged values: the mean over the ranks (= over the global batch)
                last_values = distributed.mean_across_ranks(
                    {k: v / window_steps for k, v in window.items()})
                last_values["lr"] = lr
                last_values["images_per_s"] = window_steps * batch_size / max(elapsed, 1e-9)
                if main:
                    log.log(step, last_values)
                window, window_steps, window_start = {}, 0, time.perf_counter()
            if step % cfg.log.checkpoint_every == 0 or last:
                last_checkpoint = checkpoint_now(step)
            if validate_every and (step % validate_every == 0 or last):
                validate_now(step)
                window_start = time.perf_counter()      # images/s counts training only
            if out_of_time and step < end_step:
                break

    distributed.barrier()
    if last_checkpoint is None and resume:      # nothing left to do: report where it stands
        last_checkpoint = load_checkpoint(ckpt_dir).path
    return TrainResult(run_dir, max(start_step, step), last_checkpoint, last_values,
                       stopped_by_time_limit=step < end_step)
