"""The public MulMON code (github.com/NanboLi/MulMON) against ours, side by side in one process.

    .venv/bin/python benchmarks/bench_mulmon_public.py --public-src /tmp/mulmon_public
        [--pairs 3] [--scenes 8] [--views 10] [--observed 3] [--size 64] [--threads 1]
        [--skip-flops]

Issue 4 quotes the public MulMON code at ~0.5 scenes/s and ~70% of the fp32 matmul rate; this
measures it here, the way benchmarks/bench_mulmon_train.py measures ours. Their sources are NOT
part of this repository: ``--public-src`` names a directory holding their ``models/mulmon.py``,
``models/modules.py``, ``utils.py``, ``visualisation.py`` and ``config.py`` as published.

One training step, for both models, on the same random batch: the forward with ``--observed``
observed views x 5 refinement iterations and the remaining views as queries, backward,
gradient-norm clip 5.0, Adam (lr 2e-4). Theirs is driven as their trainer drives it
(trainer/model_trainer.py: ``model(images, targets, std)``, sum of the loss dict) with their
CLEVR-MV configuration (train.py + scripts/train_clevr.sh: K=7, D=16, pixel sigma 0.1,
temperature 0 so sigma stays 0.1, view code size = viewpoint size 3, all ELBO weights 1);
ours is ``MulMONConfig(viewpoint="clevr-mv")`` without LDS. One warm-up step each, then
``--pairs`` pairs of steps alternating (the first model of a pair alternates too); the
per-pair time ratio theirs/ours survives the shared machine's drifting load better than two
separate runs. FLOPs of one step of each are counted with FlopCounterMode (convs and matmuls:
forward, refinement gradients, backward); utilisation is against the 4096^3 fp32 matmul rate
measured in the same run (benchmarks/flops.py), best of before and after.

Settings of theirs that differ from their defaults, to do the same work as ours:
``min_sample_views = max_sample_views = --observed`` (their training draws the number of
observed views from 1..6 each step; the paper setting fixes 3 observed + 7 query), batch
``--scenes`` scenes (their script runs batch 1 per GPU), Adam lr 2e-4 (their script: 1e-4;
no effect on time) without their learning-rate scheduler (one scalar update per step).

Same architecture and parameter count (printed), same views, slots, image size, decoder calls
and refinement steps (4 per view: the last of the 5 iterations on a view is scored, not
refined, in both since commit 8bed88d). The work still differs in one place: their decoder
convolves the tiled (D + 2)-channel grid in its first layer and takes the refinement gradients
with three ``autograd.grad`` calls; ours computes the first layer's latent part as one matmul
(coordinates once per forward) and takes one ``autograd.grad``. So their step counts ~1.2x our
FLOPs; compare the time ratio for "same training step", the utilisations for "how well each
uses the machine".

Compatibility shims, installed here (their files are used unmodified):
  * ``attrdict``: not installed (and the PyPI package fails to import on Python >= 3.10); their
    forward returns an ``AttrDict`` of two losses, so a dict subclass with attribute access.
  * ``six``, ``imageio``, ``skimage``, ``torchvision``: not installed; imported at module level
    by their ``utils.py`` / ``visualisation.py`` but used only by their visualisation and
    pickling helpers, never by a training step. Stub modules whose functions raise if called.
  * ``torch.meshgrid`` without ``indexing=``: still works on torch 2.13 (default "ij", as they
    meant), with a deprecation warning that is silenced.
  * matplotlib (their visualisation module imports pyplot) gets the non-interactive Agg backend.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flops import kernel_family, matmul_rate  # noqa: E402  (benchmarks/flops.py)

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from common.errors import UserError  # noqa: E402
from lds.models import MulMONConfig, build_model  # noqa: E402
from lds.training.loop import keep_freed_memory  # noqa: E402

PUBLIC_FILES = ("models/mulmon.py", "models/modules.py", "utils.py", "visualisation.py", "config.py")
PUBLIC_MODULES = ("models", "models.mulmon", "models.modules", "utils", "visualisation", "config")


class AttrDict(dict):
    """Stand-in for attrdict.AttrDict: a dict whose keys read as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as error:
            raise AttributeError(name) from error

    def __setattr__(self, name, value):
        self[name] = value


def _stub_module(name: str, attributes: tuple[str, ...] = ()) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__doc__ = "bench_mulmon_public stub: not installed, not used by a training step"

    def unavailable(*_args, **_kwargs):
        raise RuntimeError(f"{name} is a benchmark stub (not installed); only visualisation uses it")

    for attribute in attributes:
        setattr(module, attribute, unavailable)
    return module


def install_shims() -> list[str]:
    """Make their module-level imports resolve on this environment; returns what was shimmed."""
    installed = []

    def missing(name: str) -> bool:
        if name in sys.modules:
            return False
        try:
            __import__(name)
            return False
        except Exception:  # noqa: BLE001  (attrdict raises ImportError deep inside on 3.10+)
            return True

    if missing("attrdict"):
        attrdict = types.ModuleType("attrdict")
        attrdict.AttrDict = AttrDict
        sys.modules["attrdict"] = attrdict
        installed.append("attrdict.AttrDict (dict with attribute access)")
    stubs = {
        "six": {"six": (), "six.moves": (), "six.moves.cPickle": ("load", "dump", "loads", "dumps")},
        "imageio": {"imageio": ("imwrite", "imread", "mimsave")},
        "skimage": {"skimage": (), "skimage.transform": ("resize",)},
        "torchvision": {"torchvision": (), "torchvision.utils": ("make_grid", "save_image")},
    }
    for top, modules in stubs.items():
        if not missing(top):
            continue
        for name, attributes in modules.items():
            sys.modules[name] = _stub_module(name, attributes)
        for name in modules:                       # link submodules as attributes of parents
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, sys.modules[name])
        installed.append(f"{top} (stub: {', '.join(modules)})")
    os.environ.setdefault("MPLBACKEND", "Agg")
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release")
    installed.append("torch.meshgrid without indexing= (works, 'ij'; warning silenced)")
    return installed


def load_public_mulmon(src: Path):
    """Import their MulMON class and CONFIG from ``src`` (their repository layout)."""
    absent = [f for f in PUBLIC_FILES if not (src / f).is_file()]
    if absent:
        raise UserError(f"--public-src {src} lacks the public MulMON files {', '.join(absent)} "
                        f"(expected the layout of github.com/NanboLi/MulMON)")
    shims = install_shims()
    for name in PUBLIC_MODULES:                    # their top-level names must come from src
        sys.modules.pop(name, None)
    sys.path.insert(0, str(src))
    try:
        from config import CONFIG
        from models.mulmon import MulMON
    finally:
        sys.path.remove(str(src))
    for name in PUBLIC_MODULES:
        module = sys.modules.get(name)
        where = getattr(module, "__file__", None) or str(getattr(module, "__path__", [""])[0])
        if not Path(where).resolve().is_relative_to(src.resolve()):
            raise UserError(f"module {name!r} resolved to {where}, not under --public-src {src}")
    return MulMON, CONFIG, shims


def public_config(CONFIG, args):
    """Their CLEVR-MV training configuration (train.py main + running_cfg, train_clevr.sh)."""
    cfg = CONFIG()
    cfg.arch = "mv_MulMON"
    cfg.DATA_TYPE = "clevr_mv"
    cfg.WORK_MODE = "training"
    cfg.num_slots = 7
    cfg.temperature = 0.0
    cfg.latent_dim = 16
    cfg.v_in_dim = 3
    cfg.view_dim = cfg.v_in_dim                    # running_cfg overwrites --view_dim with this
    cfg.min_sample_views = args.observed           # fixed split (theirs: drawn from 1..6)
    cfg.max_sample_views = args.observed
    cfg.num_vq_show = 5
    cfg.pixel_sigma = 0.1
    cfg.image_size = [args.size, args.size]
    cfg.lr_rate = 2e-4
    cfg.elbo_weights = {"kl_latent": 1.0, "kl_spatial": 1.0, "exp_attention": 1.0,
                        "exp_nll": 1.0, "query_nll": 1.0}
    return cfg


class CallCounter:
    """Forward hook: calls of a module and the rows (slot images) it processed."""

    def __init__(self, module: torch.nn.Module):
        self.calls = self.rows = 0
        module.register_forward_hook(self)

    def __call__(self, _module, inputs, _output):
        first = inputs[0]
        if isinstance(first, dict):                # their refinement net takes {'img', 'state'}
            first = first["img"]
        self.calls += 1
        self.rows += int(first.shape[0])

    def take(self) -> tuple[int, int]:
        seen = (self.calls, self.rows)
        self.calls = self.rows = 0
        return seen


def count_flops(step) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--public-src", type=Path, required=True,
                        help="directory with the public MulMON sources (their repository layout)")
    parser.add_argument("--pairs", type=int, default=3, help="timed pairs after one warm-up pair")
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--observed", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-flops", action="store_true", help="skip the (slow) FLOP counts")
    args = parser.parse_args()
    print(f"CPU kernels: {kernel_family()}")   # figures differ by kernel family (AVX2, AVX-512, AMX)
    if not 1 <= args.observed < args.views:
        raise UserError("need 1 <= --observed < --views (at least one query view)")
    if args.pairs < 1:
        raise UserError("--pairs must be at least 1")
    torch.set_num_threads(args.threads)
    keep_freed_memory()

    PublicMulMON, CONFIG, shims = load_public_mulmon(args.public_src)
    torch.manual_seed(0)
    s, v, size = args.scenes, args.views, args.size
    image = torch.rand(s, v, 3, size, size)
    viewpoint = torch.randn(s, v, 3)

    theirs = PublicMulMON(public_config(CONFIG, args)).train()
    their_optimizer = torch.optim.Adam([p for p in theirs.parameters() if p.requires_grad], lr=2e-4)
    their_images = list(image.unbind(0))           # their loader: a list of (V, 3, H, W) per scene
    their_targets = [{"view_points": viewpoint[i].clone()} for i in range(s)]

    def their_step() -> float:                     # trainer/model_trainer.py, _train_epoch
        their_optimizer.zero_grad()
        loss_dict = theirs(their_images, [dict(t) for t in their_targets], std=0.1)
        losses = sum(loss for loss in loss_dict.values())
        losses.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 5.0)
        their_optimizer.step()
        return float(losses.detach())

    cfg = MulMONConfig(height=size, width=size, viewpoint="clevr-mv")
    ours = build_model(cfg).train()
    our_optimizer = torch.optim.Adam(ours.parameters(), lr=2e-4)
    batch = {"image": image, "viewpoint": viewpoint}

    def our_step() -> float:                       # as benchmarks/bench_mulmon_train.py
        our_optimizer.zero_grad(set_to_none=True)
        out = ours(batch, num_observed=args.observed)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 5.0)
        our_optimizer.step()
        return float(out.loss.detach())

    steps = {"theirs": their_step, "ours": our_step}
    counters = {"theirs": (CallCounter(theirs.decoder), CallCounter(theirs.refine_net)),
                "ours": (CallCounter(ours.decoder), CallCounter(ours.refine))}
    params = {"theirs": sum(p.numel() for p in theirs.parameters()),
              "ours": sum(p.numel() for p in ours.parameters())}

    rate_before = matmul_rate()
    work, losses = {}, {}
    for name, step in steps.items():               # warm-up, and what one step runs
        losses[name] = step()
        decoder, refine = counters[name]
        work[name] = (decoder.take(), refine.take())
    times: dict[str, list[float]] = {"theirs": [], "ours": []}
    for pair in range(args.pairs):
        order = ("theirs", "ours") if pair % 2 == 0 else ("ours", "theirs")
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    flops = {name: 0 if args.skip_flops else count_flops(step) for name, step in steps.items()}
    rate_after = matmul_rate()
    rate = max(rate_before, rate_after)

    print(f"MulMON training step, public code vs ours: {s} scenes x {v} views ({args.observed} "
          f"observed x 5 iterations + {v - args.observed} query), {size}x{size}, K=7, D=16, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"  public sources: {args.public_src}")
    print(f"  shims: {'; '.join(shims)}")
    print(f"  fp32 matmul rate (4096^3 mm): {rate / 1e9:.1f} GFLOP/s (before {rate_before / 1e9:.1f}, "
          f"after {rate_after / 1e9:.1f})")
    for name in ("theirs", "ours"):
        (dec_calls, dec_rows), (ref_calls, ref_rows) = work[name]
        median = statistics.median(times[name])
        line = (f"  {name:6s}: step times (s) {', '.join(f'{t:.2f}' for t in times[name])}  median "
                f"{median:.2f}   scenes/s {s / median:.3f}")
        if flops[name]:
            achieved = flops[name] / median
            line += (f"   FLOPs/step {flops[name] / 1e9:.1f} G   {achieved / 1e9:.1f} GFLOP/s = "
                     f"{100 * achieved / rate:.0f}% of the matmul rate")
        print(line)
        print(f"          per step: decoder {dec_calls} calls / {dec_rows} slot images, refinement "
              f"network {ref_calls} calls / {ref_rows} slot images; {params[name]} parameters; "
              f"warm-up loss {losses[name]:.1f}")
    ratios = [a / b for a, b in zip(times["theirs"], times["ours"])]
    print(f"  time(theirs) / time(ours) per pair: {', '.join(f'{r:.3f}' for r in ratios)}  "
          f"median {statistics.median(ratios):.3f}")
    if flops["theirs"] and flops["ours"]:
        print(f"  FLOPs(theirs) / FLOPs(ours): {flops['theirs'] / flops['ours']:.3f}")
    print(f"  load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        sys.exit(f"error: {error}")
