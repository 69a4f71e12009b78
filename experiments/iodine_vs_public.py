"""Does our IODINE decompose at least as well as a public PyTorch IODINE? Train both alike.

The public model is the IODINE of github.com/zhixuan-lin/IODINE (commit 9054669;
lib/modeling/iodine.py, its README reports ARI 0.971 on CLEVR6), read from --public-src: a
checkout of that repository that this script imports at run time and never copies. None of its
code is changed. Two things are stood in for while its modules import, and only then:

* ``yacs`` (its configuration library, not a dependency of this project): ``yacs.config.CfgNode``
  becomes genesis_checkout.AttrDict, a dict with attribute access, which is all its
  lib/config/defaults.py uses (``CN()``, attribute assignment and reads);
* the import-time housekeeping of lib/config/defaults.py: it creates ``data/model`` inside the
  checkout (``os.makedirs``) and runs ``rm -r logs/test`` there when that exists
  (``os.system``). Both are replaced by no-ops that record the call while the module runs, so a
  read-only checkout works and nothing in it is created or deleted.

Their model is built from their own defaults (``cfg.ARCH`` of lib/config/defaults.py) with the
settings ours has set to ours (Table 2 of the LDS paper / IODINEConfig): image size, K
(``SLOTS``), latent dim D = 16 (``DIM_LATENT``; their default 128, their CLEVR6 config 64),
T = 5 refinement updates and T + 1 decodes (``ITERS``: their loop is ours), pixel sigma 0.1
(``SIGMA``; default 0.13), refinement convs 4 x 64 channels, 3x3, stride 2 (``REF.CONV_LAYERS``,
``REF.CONV_CHAN``; default 3 x 32), MLP and LSTM width 256 (``REF.MLP_UNITS``), decoder 4 x 64
channels with 3x3 kernels (``DEC.CONV_LAYERS``, ``DEC.CONV_CHAN``, ``DEC.KERNEL_SIZE``; default
5 x 64, 5x5), and their default input encodings plus ``coordinate`` (as their
configs/clevr6_prop.yaml, which their README's results use): then both refinement networks see
the same 17 image channels and 4D vector inputs, ``LAYERNORM`` on. Their Adam weight decay
(default 5e-4, 0 in their configs) is not used: both are trained with our optimiser, and both
are clipped at --clip although their trainer does not clip (its ``clip_grad_norm_`` line is
commented out; --clip 0 turns clipping off for both). Their configs' lr is 3e-4, ours 1e-4.

What necessarily differs (each is in their code as it stands, not a setting):

* **Refinement gradients.** Theirs gets dL/dlambda, dL/dmu and dL/dmask by calling
  ``(B * elbo).backward(retain_graph=True)`` inside ``forward`` at every refinement iteration and
  reading ``.grad`` of the retained tensors. Those calls also accumulate gradients into every
  parameter; their trainer (lib/engine/train.py) wipes them by calling ``optimizer.zero_grad()``
  *after* the forward pass and before ``loss.backward()``. This script's step does exactly that
  (forward, zero_grad, backward, clip, step), and --check verifies that the gradient the
  optimiser then sees equals ``torch.autograd.grad`` of the returned loss. Because the
  posterior is not detached from the LSTM state, each of those backward passes runs through the
  refinement network of every earlier iteration too: O(T^2) refinement backward work per step.
  Ours takes dL/dmu and dL/d(mask logit) analytically and dL/dlambda with one
  ``torch.autograd.grad`` through the decoder per iteration (no weight gradients).
* **What is detached.** Theirs detaches every refinement input (``encoding.detach()``,
  ``latent.detach()``) and the posterior between iterations (``mean.detach() + delta``): the
  decoder learns from the ELBO terms only and the refinement network through each delta and the
  LSTM state. Ours (as DeepMind's original) detaches only the gradients and likelihood inputs;
  lambda is updated additively with its graph, and x, mu, masks, logits and the mask posterior
  carry gradients to the decoder through the refinement path.
* **Likelihood.** Theirs mixes per colour channel: log p(x) = sum_c log sum_k m_k N(x_c; mu_kc,
  sigma^2); ours (and the original) per pixel: log sum_k m_k prod_c N(x_c; mu_kc, sigma^2).
  Their masks enter as log(m + 1e-12). ``--theirs-likelihood pixel`` tests whether this is what
  keeps their slots alike: their module's ``gaussian_log_likelihood`` (its one caller is
  ``elbo``) is wrapped to sum over the colour channels, so their own ``logsumexp`` over the
  slots then mixes once per pixel. Every other use of it in their code (the mask posterior, the
  leave-one-out term) already sums over the channels first, and the pixel likelihood input sums
  their per-channel terms, so the refinement inputs keep their shapes and meanings. Their files
  stay unchanged; the default, ``channel``, is their code as published.
* **Loss weights.** Theirs weighs the T + 1 decodes (i + 1) / (T + 1) (1/6 .. 1, sum 3.5 for
  T = 5); ours t / T (0 .. 1, sum 3.0; lambda_0's loss weighs 0). Both per image (sum over
  pixels, mean over the batch), so the two loss values differ by construction and are not
  compared as numbers.
* **Posterior.** Theirs lambda = (mean, log variance), lambda_0 learned from (0, 0); ours
  (mean, s) with variance softplus(s), lambda_0 from N(0, I). Theirs updates both with separate
  linear heads read from the LSTM's *cell* state (``(c, h) = self.lstm(...)`` names the
  LSTMCell's (h, c) the other way round); ours one head from the hidden state, forget-gate bias
  1 (snt.LSTM) against PyTorch's 0.
* **Refinement inputs.** Same 17 channels, computed differently: theirs takes the gradient with
  respect to the softmax masks (ours: the mask logits), the mixture *likelihood* p(x) (ours
  log p(x)), the leave-one-out *likelihood* (p(x) - m_k p_k) / (1 - m_k + 1e-5) (ours the
  counterfactual log p(x) - log p_{-k}(x)), and the mask posterior p_k / sum_j p_j without an
  epsilon (it is 0/0 = NaN where every slot's likelihood underflows; a NaN loss stops that
  model's training, below). Both layer-norm the same inputs (the gradients, the likelihood, the leave-one-out
  term; ``LAYERNORM`` True): theirs as (x - mean) / (std + 1e-5), over channels x pixels per
  slot, and for the vector inputs over D with the unbiased std, per moment; ours with the
  biased variance and eps inside the root, the vector over all 2D numbers. Gradients are of the
  ELBO (theirs) or the loss (ours): the sign flips, which the following linear layers absorb.
  Their default ``ENCODING`` list lacks ``coordinate``; it is added here (as their CLEVR6
  config does), so both see the x, y channels.
* **Memory.** Their ``retain_graph=True`` passes keep every iteration's graph, and their
  global logger (lib/utils/vis_logger.py) holds the last decode's tensors between steps; their
  ``IMG_SIZE`` is one number (square images only).
* **Networks.** Their decoder broadcasts z at H x W and uses SAME-padded 3x3 convs with ELU and
  a 3x3 output conv; ours broadcasts at (H + 8) x (W + 8), unpadded convs, ReLU, a 1x1 head.
  Their refinement convs are SAME-padded and average-pooled to 1x1 before one Linear (ELU applied
  twice); ours unpadded, flattened, a two-layer MLP. Parameter counts therefore differ a little
  (--check prints them).

Both models see the same batches in the same order: ``ImageDataset`` of the --train store and
the training loop's step sampler (lds.training.loop.StepBatchSampler, seeded by --seed), as
experiments/monet_vs_public.py does. With --only both (default) their steps alternate in one
process (the first of each pair alternates too), so the machine's load hits both alike. Before
each model's step torch's RNG is seeded from (seed, step) as our trainer seeds it; each model is
initialised from torch's RNG seeded with --seed. Same optimiser: Adam (eps 1e-8, no weight
decay), lr --lr (1e-4) with our --schedule (GQN by default), gradient-norm clip --clip (5.0),
batch --batch (8), K --slots (7). Ours is trained without LDS (the control): its loss is the
model's negative ELBO, as ``ldsrig train iodine --no-lds`` minimises. A model whose loss or
gradient turns non-finite stops (its next row says so under "stopped").

Every --eval-every steps (and at step 0) both are scored on the held-out --val store by the same
code, lds.evaluation.evaluate (what ``ldsrig eval`` runs): MSE, mIoU, ARI, FG-ARI, Sim and the
duplicate counts, on the decoded masks. Theirs is wrapped as ``PublicIODINEAdapter``: their
``encode`` (their inference as their ARI evaluator runs it: T refinement updates, z sampled at
every iteration from torch's RNG, which evaluate seeds per batch) then their decoder, mapped onto
our output contract (lds/contract.py), with each iteration's posterior mean as ``lds_means`` so
the per-iteration Sim (meta.sim_by_iteration) works for theirs too. By default
(``--theirs-final mean``) the last decode uses the final posterior mean, as our eval mode does;
``--theirs-final sampled`` decodes a sample, as their ``reconstruct`` does. Ours is scored in
eval mode as ``ldsrig eval`` scores it (refinement noise seeded per image, the posterior mean
decoded last).

Writes OUT/<ours|theirs>_seed<S>.jsonl, one row per evaluation: step, train_seconds (training
steps only), loss (the mean of each model's own training loss since the previous row), lr,
images_per_s (cumulative over training), final (how the last decode was made) and every
evaluation aggregate's mean (mse, miou, ari, fg_ari, sim, ...); the final weights as
OUT/<who>_seed<S>_step<N>.safetensors. --plot draws OUT/curves.png (FG-ARI, mIoU, MSE, ARI and
the training losses against steps, mean +- std over seeds) and OUT/summary.json over all runs in
OUT. --score-saved STORE evaluates the saved weights of OUT on STORE (test scenes).

Commands (the smoke settings: tiny stores, 32x32, K=3; the paper's size is 64x64, K=7; ours
needs at least 31x31 images for its four unpadded stride-2 refinement convs):

    .venv/bin/ldsrig data synth clevr-mv /tmp/iocmp/train.zarr --scenes 4 --views 4 \\
        --min-objects 2 --max-objects 3 --seed 0
    .venv/bin/ldsrig data synth clevr-mv /tmp/iocmp/val.zarr --scenes 2 --views 4 \\
        --min-objects 2 --max-objects 3 --seed 1
    .venv/bin/ldsrig data prepare /tmp/iocmp/train.zarr /tmp/iocmp/train32.zarr --size 32
    .venv/bin/ldsrig data prepare /tmp/iocmp/val.zarr /tmp/iocmp/val32.zarr --size 32
    mkdir -p /tmp/iodine_public && git -C /work/.mirror/zhixuan-lin+IODINE/repo archive HEAD \\
        | tar -x -C /tmp/iodine_public     # their sources; never copied into this repository
    .venv/bin/python experiments/iodine_vs_public.py --check --public-src /tmp/iodine_public \\
        --train /tmp/iocmp/train32.zarr --slots 3 --batch 4
    .venv/bin/python experiments/iodine_vs_public.py --speed --public-src /tmp/iodine_public \\
        --size 32 --slots 3 --batch 4 --pairs 3
    .venv/bin/python experiments/iodine_vs_public.py --public-src /tmp/iodine_public \\
        --train /tmp/iocmp/train32.zarr --val /tmp/iocmp/val32.zarr --out /tmp/iocmp/cmp \\
        --slots 3 --batch 4 --steps 4 --eval-every 2 --seed 0
    .venv/bin/python experiments/iodine_vs_public.py --out /tmp/iocmp/cmp --plot
    .venv/bin/python experiments/iodine_vs_public.py --public-src /tmp/iodine_public \\
        --out /tmp/iocmp/cmp --slots 3 --score-saved /tmp/iocmp/val32.zarr

A real comparison: CLE-MV-like stores of many scenes at 64x64 (``--size 64`` in
``ldsrig data prepare``), the defaults --slots 7 --batch 8 --lr 1e-4, --steps in the tens of
thousands, --eval-every 1000, one run per --seed, then --plot over OUT. What the smoke runs
measured is in docs/models.md ("Against a public IODINE"); four steps on sixteen images show
that the pipeline runs end to end, not which model learns better.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sys
import time
import types
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from common.errors import UserError  # noqa: E402
from genesis_checkout import AttrDict  # noqa: E402  (experiments/)
from lds.contract import ModelOutput  # noqa: E402
from lds.models.base import mixture_log_likelihood  # noqa: E402
from seed_curves import plot_comparison, require_stores  # noqa: E402  (experiments/)
from side_by_side import Trainee, run_settings, train_alternating  # noqa: E402  (experiments/)

WHO = ("ours", "theirs")
LABELS = {"ours": "ldsrig IODINE", "theirs": "zhixuan-lin/IODINE (public)"}
PUBLIC_FILES = ("lib/modeling/iodine.py", "lib/config/defaults.py", "lib/utils/vis_logger.py")
PANELS = (("fg_ari", "FG-ARI (held out)", None), ("miou", "mIoU (held out)", None),
          ("mse", "MSE (held out)", None), ("ari", "ARI (held out)", None),
          ("loss", "training loss (each its own objective)", None))
PRINTED = ("loss", "mse", "fg_ari", "miou", "ari")
# Their refinement inputs with ``coordinate``: the 17 image channels ours computes.
EXTRA_ENCODINGS = ("coordinate",)


# ---- the public IODINE, imported from its own checkout -------------------------------------------

def check_sources(src: str | None) -> Path:
    """The checkout as a Path, or one clear line when it is missing or incomplete."""
    if not src:
        raise UserError("--public-src DIR (a checkout of zhixuan-lin/IODINE) is needed; "
                        "--only ours trains ours alone")
    path = Path(src)
    if not path.is_dir():
        raise UserError(f"--public-src {path} is not a directory")
    absent = [f for f in PUBLIC_FILES if not (path / f).is_file()]
    if absent:
        raise UserError(f"--public-src {path} lacks {', '.join(absent)} (the layout of "
                        "github.com/zhixuan-lin/IODINE)")
    return path


@contextlib.contextmanager
def _import_stand_ins(notes: list[str]):
    """yacs as AttrDict, and defaults.py's os.makedirs / os.system recorded, not run."""
    yacs, yacs_config = types.ModuleType("yacs"), types.ModuleType("yacs.config")
    yacs_config.CfgNode = AttrDict
    yacs.config = yacs_config
    fakes = {"yacs": yacs, "yacs.config": yacs_config}
    saved = {name: sys.modules.get(name) for name in fakes}
    makedirs, system = os.makedirs, os.system

    def skipped_makedirs(path, *_args, **_kwargs):
        notes.append(f"os.makedirs({os.fspath(path)!r}) skipped")

    def skipped_system(command):
        notes.append(f"os.system({command!r}) skipped")
        return 0

    sys.modules.update(fakes)
    os.makedirs, os.system = skipped_makedirs, skipped_system
    try:
        yield
    finally:
        os.makedirs, os.system = makedirs, system
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


_LOADED: dict = {}


def load_public_iodine(src: Path):
    """(their IODINE class, their default config (``cfg`` of lib/config/defaults.py), their
    global logger, notes on the stand-ins). Imported once per process."""
    if _LOADED:
        return _LOADED["cls"], _LOADED["defaults"], _LOADED["logger"], _LOADED["notes"]
    src = src.resolve()
    notes: list[str] = ["yacs.config.CfgNode -> genesis_checkout.AttrDict"]
    sys.path.append(str(src))                  # after ours: our packages keep their names
    try:
        with _import_stand_ins(notes), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            defaults = importlib.import_module("lib.config.defaults")
            iodine = importlib.import_module("lib.modeling.iodine")
            vis_logger = importlib.import_module("lib.utils.vis_logger")
    except Exception as exc:                   # another version of the repository, say
        raise UserError(f"cannot import lib.modeling.iodine from {src}: {exc!r}") from None
    for module in (defaults, iodine):
        if src not in Path(module.__file__).resolve().parents:
            raise UserError(f"`import {module.__name__}` found {module.__file__}, not the "
                            f"checkout {src}: another package named `lib` shadows it")
    _LOADED.update(cls=iodine.IODINE, defaults=defaults._C, logger=vis_logger.logger, notes=notes,
                   module=iodine, log_likelihood=iodine.gaussian_log_likelihood)
    return iodine.IODINE, defaults._C, vis_logger.logger, notes


def summed_over_channels(log_likelihood):
    """A per-channel Gaussian log-likelihood (..., C, H, W) -> its sum over C, kept as one
    channel: fed to a logsumexp over the slots, the mixture is then per pixel (Eq. 1)."""
    def per_pixel(x, loc, scale):
        return log_likelihood(x, loc, scale).sum(dim=-3, keepdim=True)
    return per_pixel


def set_their_likelihood(kind: str) -> None:
    """``channel``: their published per-channel mixture; ``pixel``: per pixel (see the module
    docstring). Loaded modules are shared by the process, so this is set before each build."""
    original = _LOADED["log_likelihood"]
    _LOADED["module"].gaussian_log_likelihood = (original if kind == "channel"
                                                 else summed_over_channels(original))


def public_arch(defaults, size: int, ours_cfg) -> AttrDict:
    """Their ``cfg.ARCH`` defaults with size, K, D, T, sigma and widths set to ours."""
    arch = AttrDict({k: AttrDict(v) if isinstance(v, dict) else v
                     for k, v in defaults.ARCH.items()})
    if len(set(ours_cfg.refine_channels)) != 1 or len(set(ours_cfg.decoder_channels)) != 1:
        raise UserError("their networks have one width per network; ours must too")
    if ours_cfg.refine_hidden != ours_cfg.lstm_hidden:
        raise UserError("their MLP and LSTM share one width (REF.MLP_UNITS); ours must too")
    arch.update(IMG_SIZE=size, IMG_CHANNELS=3, SLOTS=ours_cfg.num_slots,
                DIM_LATENT=ours_cfg.latent_dim, ITERS=ours_cfg.num_iterations,
                SIGMA=ours_cfg.pixel_sigma,
                ENCODING=list(defaults.ARCH.ENCODING) + [e for e in EXTRA_ENCODINGS
                                                         if e not in defaults.ARCH.ENCODING])
    arch.REF.update(CONV_CHAN=ours_cfg.refine_channels[0], CONV_LAYERS=len(ours_cfg.refine_channels),
                    MLP_UNITS=ours_cfg.refine_hidden, KERNEL_SIZE=3, STRIDE=2)
    arch.DEC.update(CONV_CHAN=ours_cfg.decoder_channels[0],
                    CONV_LAYERS=len(ours_cfg.decoder_channels), KERNEL_SIZE=3)
    return arch


def ours_config(size: int, slots: int, latent_dim: int):
    from lds.models import IODINEConfig

    return IODINEConfig(height=size, width=size, num_slots=slots, latent_dim=latent_dim)


def build_pair(src: Path | None, size: int, slots: int, latent_dim: int, seed: int,
               who: tuple[str, ...] = WHO, their_likelihood: str = "channel"):
    """{who: model} in training mode, each initialised from torch's RNG seeded with ``seed``;
    theirs is the raw public module (wrap it in PublicIODINEAdapter)."""
    from lds.models import build_model

    cfg = ours_config(size, slots, latent_dim)
    models = {}
    for name in who:
        torch.manual_seed(seed)
        if name == "ours":
            models[name] = build_model("iodine", cfg).train()
        else:
            cls, defaults, _, _ = load_public_iodine(src)
            set_their_likelihood(their_likelihood)
            models[name] = cls(public_arch(defaults, size, cfg)).train()
    return models, cfg


class PublicIODINEAdapter(torch.nn.Module):
    """Their model, trained as their train.py trains it and scored on our output contract.

    ``loss(image)``: their ``forward`` (whose internal ``.backward()`` calls leave gradients in
    every parameter: call ``optimizer.zero_grad`` after it, as their trainer does) as their
    trainer reduces it (``.mean()``). ``forward(batch)``: their ``encode`` (T refinement updates
    with their internal backward passes, z sampled each iteration), then their decoder on the
    final posterior mean (``final="mean"``) or a sample of it (``"sampled"``, their
    ``reconstruct``); the weight gradients ``encode`` leaves behind are cleared.
    """

    input_keys = ("image",)
    item_kind = "images"

    def __init__(self, model, final: str = "mean"):
        super().__init__()
        if final not in ("mean", "sampled"):
            raise ValueError(f"final must be mean or sampled, got {final!r}")
        self.model, self.final = model, final
        self.num_slots = model.K
        t = model.n_iters
        # Their forward's weights over the T + 1 decodes.
        self.register_buffer("iteration_weights",
                             torch.arange(1, t + 2, dtype=torch.float32) / (t + 1), persistent=False)

    def output_rows(self, batch: dict) -> int:
        return int(batch["image"].shape[0])

    def loss(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image).mean()

    @contextlib.contextmanager
    def recording(self, logger=None):
        """Each ``elbo`` call's posterior mean, sample z and (with their logger) likelihood and
        KL, recorded by wrapping ``elbo`` on this instance only (their file is unchanged)."""
        model, records = self.model, []
        elbo = model.elbo

        def recorded_elbo(x):
            value = elbo(x)
            row = {"mean": model.posterior.mean.detach(), "z": model.z.detach(),
                   "elbo": float(value.detach())}
            if logger is not None:
                row.update(likelihood=float(logger.things["likelihood"].detach()),
                           kl=float(logger.things["kl"].detach()))
            records.append(row)
            return value

        model.elbo = recorded_elbo
        try:
            yield records
        finally:
            del model.elbo                     # back to the class's method

    def forward(self, batch: dict) -> ModelOutput:
        image = batch["image"]
        model = self.model
        b, _, h, w = image.shape
        with torch.enable_grad(), self.recording() as records:   # their inference takes gradients
            z = model.encode(image)
        model.zero_grad(set_to_none=True)     # encode's backward passes filled the weight grads
        mean, logvar = model.posterior.mean.detach(), model.posterior.logvar.detach()
        final = mean if self.final == "mean" else z.detach()
        with torch.no_grad():
            appearance, mask_logits = model.decoder(final)        # as their decode
            masks = F.softmax(mask_logits, dim=1)
        zero = image.new_zeros(())
        out = ModelOutput(
            zero, {"loss": zero}, final, mean, logvar, mask_logits, masks, appearance,
            (masks * appearance).sum(dim=1),
            lds_latents=torch.stack([r["z"] for r in records] + [final]),
            lds_means=torch.stack([r["mean"] for r in records] + [mean]),
            lds_weights=self.iteration_weights[:len(records) + 1])
        return out.check(b, self.num_slots, h, w).detached()


def parameter_groups(model) -> dict[str, int]:
    """Parameters per part: decoder, refinement network, initial posterior."""
    prefixes = {"decoder": ("decoder.",), "refinement": ("refine.",),
                "initial posterior": ("initial_posterior", "posterior.")}
    counts = {name: 0 for name in prefixes}
    for name, p in model.named_parameters():
        part = next(k for k, v in prefixes.items() if name.startswith(v))
        counts[part] += p.numel()
    return counts


# ---- --check: both models on one batch ----------------------------------------------------------

def check(args) -> None:
    """Parameter counts, each model's loss on the same batch (same seed), their per-decode terms,
    and that the gradient their step applies is the gradient of their loss (their internal
    backward passes wiped by zero_grad after the forward pass, as their train.py does)."""
    torch.set_num_threads(args.threads)
    src = check_sources(args.public_src)
    if args.train:
        from datasets.torch_data import ImageDataset

        if not Path(args.train).exists():
            raise UserError(f"--train store {args.train} does not exist")
        data = ImageDataset(args.train)
        count = min(args.batch, len(data))
        image = torch.stack([data[i]["image"] for i in range(count)])
        where = f"the first {count} images of {args.train}"
    else:
        image = torch.rand(args.batch, 3, args.size, args.size,
                           generator=torch.Generator().manual_seed(args.seed))
        where = f"{args.batch} uniform-noise images"
    size = image.shape[-1]
    if image.shape[-2] != size:
        raise UserError("their model takes square images only")
    models, cfg = build_pair(src, size, args.slots, args.latent_dim, args.seed,
                             their_likelihood=args.theirs_likelihood)
    ours, theirs = models["ours"], PublicIODINEAdapter(models["theirs"])
    _, _, logger, notes = load_public_iodine(src)
    print(f"{size}x{size}, K={cfg.num_slots}, D={cfg.latent_dim}, T={cfg.num_iterations}, "
          f"sigma {cfg.pixel_sigma}, batch: {where}, seed {args.seed}, {args.threads} thread(s)")
    print(f"public sources: {src}; stand-ins: {'; '.join(notes)}")
    counts = {}
    for who, model in (("ours", ours), ("theirs", models["theirs"])):
        groups = parameter_groups(model)
        counts[who] = sum(groups.values())
        print(f"{who:6s}: {counts[who]} parameters (" +
              ", ".join(f"{k} {v}" for k, v in groups.items()) + ")")

    torch.manual_seed(step_seed_of(args.seed, 0))
    out = ours({"image": image})
    ours_loss = float(out.loss.detach())
    nll, kl = out.extras["nll_per_iteration"].detach(), out.extras["kl_per_iteration"].detach()
    torch.manual_seed(step_seed_of(args.seed, 0))
    with theirs.recording(logger) as records:
        their_loss_tensor = theirs.loss(image)
    their_loss = float(their_loss_tensor.detach())
    print(f"ours   loss {ours_loss:.2f} = sum_t t/T (NLL_t + KL_t), weights sum "
          f"{float(ours.iteration_weights.sum()):.2f}; per decode NLL " +
          " ".join(f"{float(v):.1f}" for v in nll) + "; KL " + " ".join(f"{float(v):.2f}" for v in kl))
    weights = theirs.iteration_weights
    mixture = "per-channel" if args.theirs_likelihood == "channel" else "per-pixel"
    print(f"theirs loss {their_loss:.2f} = -sum_i (i+1)/(T+1) ELBO_i, weights sum "
          f"{float(weights.sum()):.2f}; per decode NLL ({mixture} mixture) " +
          " ".join(f"{-r['likelihood']:.1f}" for r in records) + "; KL " +
          " ".join(f"{r['kl']:.2f}" for r in records))

    # Their last decode's mixture, recomputed from its masks and means by our mixture (Eq. 1, or
    # per channel), with their log(m + 1e-12).
    raw = models["theirs"]
    expected = mixture_log_likelihood(image.to(raw.mean.dtype), raw.mean, torch.log(raw.mask + 1e-12),
                                      raw.mean.new_tensor(raw.sigma),
                                      per_channel=args.theirs_likelihood == "channel")
    got = raw.log_likelihood.flatten(1).sum(1)
    print(f"theirs last decode's log-likelihood against the {mixture} formula: largest "
          f"difference {float((got - expected).detach().abs().max()):.1e} nats per image")

    # Their training step's gradient: forward (internal backward calls fill .grad), zero_grad,
    # backward, as lib/engine/train.py. It must equal the gradient of the returned loss alone.
    model = models["theirs"]
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(step_seed_of(args.seed, 1))
    loss = theirs.loss(image)
    leftover = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in params if p.grad is not None))
    model.zero_grad(set_to_none=True)
    loss.backward()
    stepped = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(step_seed_of(args.seed, 1))
    loss = theirs.loss(image)
    clean = torch.autograd.grad(loss, params, allow_unused=True)
    clean = [g if g is not None else torch.zeros_like(p) for g, p in zip(clean, params)]
    model.zero_grad(set_to_none=True)
    worst = max(float((a - b).abs().max()) for a, b in zip(stepped, clean))
    norm = float(torch.sqrt(sum(g.double().pow(2).sum() for g in clean)))
    print(f"theirs step gradient (forward, zero_grad, backward as their train.py): norm {norm:.4f}; "
          f"largest difference from autograd.grad of the loss {worst:.1e}; the internal backward "
          f"passes had left gradients of norm {float(leftover):.4f} that zero_grad removed")
    out_theirs = theirs({"image": image})          # the evaluation path meets the contract
    print(f"theirs on our output contract: masks {tuple(out_theirs.masks.shape)}, "
          f"{out_theirs.lds_means.shape[0]} decodes in lds_means")
    ratio = counts["theirs"] / counts["ours"]
    print(f"verdict: comparable are the settings (K, D, T, sigma, widths, 17+4D refinement "
          f"inputs), the data, the optimiser and the evaluation; parameters theirs/ours "
          f"{ratio:.2f}; not comparable are the loss values (their {mixture} mixture and "
          f"weights summing to {float(weights.sum()):.1f} against our per-pixel mixture and "
          f"{float(ours.iteration_weights.sum()):.1f}) and the gradient paths (theirs detaches "
          f"the refinement inputs and the posterior between iterations): compare held-out "
          f"metrics and step times, not losses")
    if worst > 1e-6 * max(1.0, norm):
        sys.exit("error: their training step's gradient is not the gradient of their loss")


def step_seed_of(seed: int, step: int) -> int:
    from lds.training.loop import step_seed

    return step_seed(seed, step)


# ---- training both the same way ------------------------------------------------------------------

def train_config(args, size: int):
    from lds.training.config import load_train_config

    return load_train_config("iodine", None, [
        f"model.height={size}", f"model.width={size}", f"model.num_slots={args.slots}",
        f"model.latent_dim={args.latent_dim}", "optim.name=adam", f"optim.lr={args.lr}",
        f"optim.batch_size={args.batch}", f"optim.steps={args.steps}",
        f"optim.grad_clip={args.clip}", f"optim.schedule={args.schedule}", f"seed={args.seed}",
        f"amp={args.amp}"])


def train(args, out: Path) -> None:
    from datasets.torch_data import ImageDataset
    from lds.training.loop import KeyCollate, StepBatchSampler, keep_freed_memory

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    require_stores(train=args.train, val=args.val)
    train_set, val_set = ImageDataset(args.train), ImageDataset(args.val)
    h, w = train_set[0]["image"].shape[-2:]
    if h != w or tuple(val_set[0]["image"].shape[-2:]) != (h, w):
        raise UserError(f"both stores must hold the same square images (their model takes "
                        f"IMG_SIZE x IMG_SIZE); got {h}x{w} and "
                        f"{tuple(val_set[0]['image'].shape[-2:])}")
    size = int(h)
    cfg = train_config(args, size)
    out.mkdir(parents=True, exist_ok=True)
    print(f"train {args.train}: {len(train_set)} images, {size}x{size}; held out {args.val}: "
          f"{len(val_set)} images (scored: {min(args.val_images, len(val_set))}); K={args.slots}, "
          f"D={args.latent_dim}; Adam lr {args.lr} ({args.schedule}), clip {args.clip}, batch "
          f"{args.batch}, {args.steps} steps, {args.threads} thread(s)", flush=True)
    who_list = list(WHO) if args.only == "both" else [args.only]
    src = check_sources(args.public_src) if "theirs" in who_list else None
    models, _ = build_pair(src, size, args.slots, args.latent_dim, args.seed, tuple(who_list),
                           args.theirs_likelihood)
    trainees = {}
    for who in who_list:
        if who == "ours":
            model = models[who]
            trainees[who] = Trainee(who, model, model, lambda x, m=model: (m({"image": x}).loss, {}),
                                    cfg, out, args.seed, {"final": "posterior mean"},
                                    {"images_per_s": args.batch}, PRINTED)
        else:
            _, _, _, notes = load_public_iodine(src)
            print(f"public sources: {src}; stand-ins: {'; '.join(notes)}", flush=True)
            adapter = PublicIODINEAdapter(models[who], args.theirs_final)
            trainees[who] = Trainee(
                who, models[who], adapter, lambda x, a=adapter: (a.loss(x), {}), cfg, out,
                args.seed, {"final": "posterior mean" if args.theirs_final == "mean" else "sample",
                            "likelihood": args.theirs_likelihood},
                {"images_per_s": args.batch}, PRINTED)
    for trainee in trainees.values():
        print(f"{trainee.who:6s}: {sum(p.numel() for p in trainee.params)} parameters", flush=True)

    collate = KeyCollate(("image",))

    def batches(start: int):
        sampler = StepBatchSampler(len(train_set), args.batch, args.seed, start, args.steps)
        return ((collate([train_set[i] for i in indices])["image"],) for indices in sampler)

    train_alternating(trainees, batches, args.steps, args.eval_every, val_set, args.val_images,
                      args.eval_batch, args.seed, out, run_settings(args), args.resume)


def score_saved(args, out: Path, store: Path) -> None:
    """Evaluate each saved model (OUT/<who>_seed<S>_step<N>.safetensors) on ``store``:
    OUT/<who>_seed<S>_step<N>_<store name>.json with every metric's mean and s.e."""
    from safetensors.torch import load_file

    from datasets.torch_data import ImageDataset
    from lds.evaluation import evaluate

    torch.set_num_threads(args.threads)
    if not store.exists():
        raise UserError(f"--score-saved store {store} does not exist")
    dataset = ImageDataset(str(store))
    size = int(dataset[0]["image"].shape[-1])
    saved = sorted(out.glob("*_seed*_step*.safetensors"))
    if not saved:
        raise UserError(f"no saved weights (<who>_seed*_step*.safetensors) in {out}")
    who_present = tuple(w for w in WHO if any(p.name.startswith(w + "_") for p in saved))
    src = check_sources(args.public_src) if "theirs" in who_present else None
    models, _ = build_pair(src, size, args.slots, args.latent_dim, args.seed, who_present,
                           args.theirs_likelihood)
    for weights in saved:
        who = weights.name.split("_seed")[0]
        model = models[who]
        model.load_state_dict(load_file(str(weights)))
        evaluated = PublicIODINEAdapter(model, args.theirs_final) if who == "theirs" else model
        result = evaluate(evaluated.eval(), dataset, batch_size=args.eval_batch,
                          max_images=args.val_images, progress=False, shard=False)
        row = dict(result.aggregates)
        path = out / f"{weights.stem}_{store.name.removesuffix('.zarr')}.json"
        path.write_text(json.dumps({"weights": weights.name, "store": str(store.resolve()),
                                    "aggregates": row}, indent=1))
        print(f"{weights.name} on {store.name}: " + ", ".join(
            f"{k} {row[k]['mean']:.4f}" for k in ("fg_ari", "ari", "miou", "mse") if k in row))


# ---- speed, side by side -------------------------------------------------------------------------

def speed(args) -> None:
    """Training steps of both models alternating in one process (same batch, same thread
    count), so the machine's load hits both alike: seconds per step and the ratio per pair, next
    to the fp32 matmul rate measured in the same run and each step's FLOPs (theirs counts the
    backward passes inside its forward)."""
    import statistics

    from torch.utils.flop_counter import FlopCounterMode

    from flops import kernel_family, matmul_rate  # benchmarks/flops.py
    from lds.training.loop import keep_freed_memory

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    src = check_sources(args.public_src)
    size = args.size
    image = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    models, cfg = build_pair(src, size, args.slots, args.latent_dim, args.seed,
                             their_likelihood=args.theirs_likelihood)
    theirs = PublicIODINEAdapter(models["theirs"])
    ours = models["ours"]
    steps = {}
    for name, model, loss_of in (("ours", ours, lambda x: ours({"image": x}).loss),
                                 ("theirs", models["theirs"], theirs.loss)):
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, eps=1e-8)

        def step(model=model, loss_of=loss_of, optimizer=optimizer):
            loss = loss_of(image)                      # their train.py's order, for both
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip or math.inf)
            optimizer.step()
        step()                                         # warm-up
        with FlopCounterMode(display=False) as counter:
            step()
        steps[name] = (step, counter.get_total_flops(), sum(p.numel() for p in model.parameters()))
    rate = matmul_rate()
    times = {"ours": [], "theirs": []}
    for i in range(args.pairs):
        order = list(steps.items()) if i % 2 == 0 else list(steps.items())[::-1]
        for name, (step, _, _) in order:
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    rate = max(rate, matmul_rate())
    print(f"IODINE training step, {size}x{size}, K={cfg.num_slots}, D={cfg.latent_dim}, "
          f"T={cfg.num_iterations}, batch {args.batch}, {args.threads} thread(s), torch "
          f"{torch.__version__}, CPU kernels: {kernel_family()}")
    print(f"fp32 matmul rate: {rate / 1e9:.0f} GFLOP/s")
    for name, values in times.items():
        median = statistics.median(values)
        flops = steps[name][1]
        print(f"{name:6s} {median:6.3f} s/step  {args.batch / median:6.1f} images/s  "
              f"{flops / 1e9:6.2f} GFLOP/step  {flops / median / rate:5.1%} of the matmul rate  "
              f"({steps[name][2]} parameters)")
    ratios = [t / o for o, t in zip(times["ours"], times["theirs"])]
    print("time(theirs) / time(ours) per pair: " + ", ".join(f"{r:.2f}" for r in ratios) +
          f" (median {statistics.median(ratios):.2f})")


# ---- curves --------------------------------------------------------------------------------------

def plot(out: Path) -> None:
    plot_comparison(out, LABELS, PANELS, "images_per_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--public-src", help="checkout of zhixuan-lin/IODINE (their layout)")
    parser.add_argument("--train", help="training store (square images)")
    parser.add_argument("--val", help="held-out store, scored every --eval-every steps")
    parser.add_argument("--out", help="directory for the curves (and --plot's figure)")
    parser.add_argument("--only", choices=["both", *WHO], default="both")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--val-images", type=int, default=240, help="held-out images scored")
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--slots", type=int, default=7, help="K")
    parser.add_argument("--latent-dim", type=int, default=16, help="D (LDS's 16)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--amp", choices=["off", "bf16"], default="off",
                        help="both training forwards under bf16 autocast (ldsrig's amp=bf16, "
                             "as experiments/iodine_cpu_regime.yaml trains); evaluation stays fp32")
    parser.add_argument("--schedule", choices=["gqn", "constant"], default="gqn")
    parser.add_argument("--clip", type=float, default=5.0)
    parser.add_argument("--theirs-likelihood", choices=["channel", "pixel"], default="channel",
                        help="their mixture: per colour channel (their code) or per pixel")
    parser.add_argument("--theirs-final", choices=["mean", "sampled"], default="mean",
                        help="their last decode: the final posterior mean (as our eval mode) or "
                             "a sample (their reconstruct)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check", action="store_true",
                        help="only: parameter counts and both losses on one batch")
    parser.add_argument("--speed", action="store_true",
                        help="only: time both models' training steps side by side")
    parser.add_argument("--size", type=int, default=32,
                        help="--speed, and --check without --train: image side")
    parser.add_argument("--pairs", type=int, default=5, help="--speed: timed step pairs")
    parser.add_argument("--resume", action="store_true",
                        help="continue OUT's run from the state saved at its last evaluation "
                             "(the same arguments; --steps may be larger)")
    parser.add_argument("--plot", action="store_true", help="only draw the curves of OUT")
    parser.add_argument("--score-saved", metavar="STORE",
                        help="only evaluate the weights saved in OUT on STORE (test scenes)")
    args = parser.parse_args()
    # Their code calls torch.meshgrid without `indexing` (the "ij" it defaults to is what it means).
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid", category=UserWarning)
    if args.check:
        check(args)
        return
    if args.speed:
        speed(args)
        return
    if not args.out:
        raise UserError("--out DIR is needed")
    out = Path(args.out)
    if args.score_saved:
        score_saved(args, out, Path(args.score_saved))
        return
    if args.plot:
        if not out.is_dir():
            raise UserError(f"--out {out} does not exist")
        plot(out)
        return
    if min(args.steps, args.eval_every, args.batch, args.val_images, args.eval_batch) < 1:
        raise UserError("--steps, --eval-every, --batch, --val-images and --eval-batch must be "
                        "positive")
    if args.only != "ours":
        check_sources(args.public_src)
    train(args, out)
    plot(out)


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        sys.exit(f"error: {error}")
