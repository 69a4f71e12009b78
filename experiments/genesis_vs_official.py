"""Is our GENESIS the official one? Both run with the same weights and noise, compared.

The official Genesis (applied-ai-lab/genesis, models/genesis_config.py with the flag defaults
its modules declare) is read from --official-src, a checkout this script never copies. Its
missing third-party imports are stood in for while it imports, as in
experiments/monet_vs_public.py: ``forge.flags`` records the flag defaults, ``attrdict`` is a
dict with attribute access, and ``tensorflow``, ``sklearn``, ``simplejson`` and
``forge.experiment_tools`` (imported by utils/misc.py, unused here) are empty modules.

Per image size its weights (batch norms randomised first) are copied into our GENESIS (default
config, K = --slots), and both run on one random batch of 3 images with every Gaussian draw
fixed to mean + c std: eval mode with c = 0, training mode (batch-statistics batch norm) with
c = 0 and c = 0.7. Printed: parameter counts, relative differences of NLL, KL_m and KL_c, the
largest absolute differences of the masks and the reconstruction. Then GECO: our beta against
the official utils/geco.py GECO, set up as its train.py does, on --geco-steps steps of one
error sequence. Exits 1 when a count differs or a difference exceeds TOLERANCE.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/genesis_vs_official.py \\
        --official-src /tmp/gofficial --size 64 32 --slots 5 --geco-steps 3000

Measured (commit 9abf202, torch 2.13 CPU, 1 thread, 5 s): parameters equal, 12,620,548 at
64x64 and 4,559,620 at 32x32; over all cases and both sizes NLL within 1.2e-7 relative, KL_m
5.3e-7, KL_c 2.2e-6, masks within 1.6e-6 absolute, reconstruction 1.8e-7; GECO's beta equal at
every one of the 3000 steps (difference 0) as it runs from 1 down to about 1e-9 and up to its
clamp at 1e10, at both sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.distributions.normal import Normal  # noqa: E402

from genesis_checkout import AttrDict, import_from_checkout  # noqa: E402  (experiments/)
from lds.models.genesis import GENESIS, GENESISConfig  # noqa: E402

# Both compute in float32, in different orders (the NLL sums 3 H W per-value terms, ours in log
# space, theirs as a sum of exponentials; the KLs sum K x D terms), so they differ by float32
# rounding (eps 1.2e-7): measured at most 2.2e-6. The mistakes tried while writing this (the
# decoder's coordinate channels or a gated layer's h and g norms swapped, GECO's alpha off by
# 0.1%) each gave a difference of 9e-3 or more.
TOLERANCE = 1e-5      # relative for NLL, KLs and GECO's beta; absolute for masks and recon
CASES = (("eval, zero noise", False, 0.0), ("train, zero noise", True, 0.0),
         ("train, noise 0.7 std", True, 0.7))


# ---- the official code, imported from its own checkout ---------------------------------------

def import_official(src: Path):
    """(Genesis class, GECO class, the modules' flag defaults) from the checkout at ``src``."""
    if not (src / "train.py").is_file():          # its GECO settings are read from train.py
        raise SystemExit(f"error: {src} is not a checkout of applied-ai-lab/genesis (no train.py)")
    (genesis, geco), defaults = import_from_checkout(
        src, [("models.genesis_config", "Genesis"), ("utils.geco", "GECO")])
    return genesis, geco, defaults


def train_py_geco_flags(src: Path) -> dict:
    """The GECO flag defaults of its train.py (g_goal, g_lr, ...), read from the text: importing
    train.py would need its data pipeline."""
    found = re.findall(r"DEFINE_float\('(g_\w+)', ([-+.\deE]+),", (src / "train.py").read_text())
    if len(found) != 6:
        raise SystemExit(f"error: expected the six GECO flags g_goal ... g_speedup in "
                         f"{src / 'train.py'}, found {[name for name, _ in found]}")
    return {name: float(value) for name, value in found}


# ---- their weights in our layout ---------------------------------------------------------------

def official_weights_as_ours(theirs: dict, ours: dict) -> dict:
    """Their state dict under our names (default architecture). The numbers are the same except
    that a gated layer's batch norms of h and g are our one norm of 2c channels, z^m_1's mean and
    scale heads our one Linear, and the broadcast decoder's coordinate channels (row, column)
    there, (column, row) here."""
    rest = dict(theirs)                       # must end up holding only their pixel std buffer
    new = {}

    def copy(our_name, their_name, keys=("weight", "bias")):
        for key in keys:
            new[f"{our_name}.{key}"] = rest.pop(f"{their_name}.{key}")

    def gated(our_conv, our_norm, their_layer):
        copy(our_conv, f"{their_layer}.conv")
        if our_norm is not None:
            for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                h = rest.pop(f"{their_layer}.h_norm.{key}")
                g = rest.pop(f"{their_layer}.g_norm.{key}")
                new[f"{our_norm}.{key}"] = h if key == "num_batches_tracked" else torch.cat([h, g])

    core = "att_process.core"
    for i in range(5):                        # image_encoder: (conv, norm, GLU) x 5, conv, GLU
        gated(f"image_encoder.{3 * i}", f"image_encoder.{3 * i + 1}", f"{core}.q_z_nn.{i}")
    gated("image_encoder.15", None, f"{core}.q_z_nn.5")
    for key in ("weight", "bias"):
        new[f"posterior_first.{key}"] = torch.cat([rest.pop(f"{core}.q_z_mean.{key}"),
                                                   rest.pop(f"{core}.q_z_var.0.{key}")])
    for key in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):   # our LSTMCell, their LSTM
        new[f"posterior_lstm.{key}"] = rest.pop(f"att_process.lstm.{key}_l0")
    copy("posterior_head", "att_process.linear")
    copy("prior_lstm", "prior_lstm", ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"))
    copy("prior_head", "prior_linear")
    gated("mask_decoder.1", None, f"{core}.p_x_nn.0")   # mask_decoder: Unflatten, conv, GLU, ...
    for i in range(5):
        gated(f"mask_decoder.{4 + 3 * i}", f"mask_decoder.{5 + 3 * i}", f"{core}.p_x_nn.{i + 1}")
    copy("mask_decoder.19", f"{core}.p_x_mean")
    for i in (0, 2, 4, 6, 9, 11):             # the same Sequential: conv/ELU x 4, Flatten, MLP
        copy(f"comp_encoder.{i}", f"comp_vae.encoder_module.module.{i}")
    for i in (0, 2, 4):
        copy(f"comp_prior.{i}", f"prior_mlp.{i}")
    for ours_i, their_i in enumerate((1, 3, 5, 7)):
        copy(f"comp_decoder.convs.{ours_i}", f"comp_vae.decoder_module.seq.{their_i}")
    copy("comp_decoder.head", "comp_vae.decoder_module.seq.9")
    first = new["comp_decoder.convs.0.weight"]          # inputs (z, row, col) -> (z, col, row)
    dc = first.shape[1] - 2
    new["comp_decoder.convs.0.weight"] = first[:, [*range(dc), dc + 1, dc]]
    assert set(rest) == {"std"}, f"official weights not copied: {sorted(rest)}"
    assert set(ours) - set(new) == {"geco_beta", "geco_err_ema"}, sorted(set(ours) - set(new))
    return new


def randomise_norms(model: torch.nn.Module) -> None:
    """Freshly built batch norms are all weight 1, bias 0, mean 0, var 1, which would hide a
    mis-copied norm (h and g swapped, say): give every channel its own values."""
    with torch.no_grad():
        for norm in model.modules():
            if isinstance(norm, torch.nn.BatchNorm2d):
                for tensor, low in ((norm.weight, 0.5), (norm.bias, -0.5),
                                    (norm.running_mean, -0.5), (norm.running_var, 0.5)):
                    tensor.uniform_(low, low + 1)


# ---- the comparisons ---------------------------------------------------------------------------

@contextlib.contextmanager
def fixed_noise(c: float):
    """Every Gaussian draw of either model becomes mean + c std: theirs draw with Normal.rsample,
    ours with torch.randn (z^m) and torch.randn_like (z^c)."""
    saved = Normal.rsample, torch.randn, torch.randn_like
    Normal.rsample = lambda self, shape=torch.Size(): (self.loc + c * self.scale).expand(
        self._extended_shape(shape)).clone()
    torch.randn = lambda size, generator=None, **kw: torch.full(size, c, **kw)
    torch.randn_like = lambda t, **kw: torch.full_like(t, c, **kw)
    try:
        yield
    finally:
        Normal.rsample, torch.randn, torch.randn_like = saved


def relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs() / theirs.abs())


def compare_forward(ours: GENESIS, theirs, size: int) -> list[float]:
    """Print each case's differences; return the largest of each column over the cases."""
    image = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    print(f"{'case':22s} {'NLL rel':>9s} {'KL_m rel':>9s} {'KL_c rel':>9s} "
          f"{'masks abs':>9s} {'recon abs':>9s}   (theirs: NLL, KL_m, KL_c)")
    rows = []
    for name, training, c in CASES:
        ours.train(training)
        theirs.train(training)
        with torch.no_grad(), fixed_noise(c):
            recon, losses, stats, _, _ = theirs(image)
            out = ours({"image": image})
        # Theirs: the per-image NLL and per-slot KL lists; ours: batch means of the sums.
        nll = losses.err.mean()
        kl_m = torch.stack(losses.kl_m_k, 1).sum(1).mean()
        kl_c = torch.stack(losses.kl_l_k, 1).sum(1).mean()
        masks = torch.stack(stats.log_m_k, 1).exp()                    # (B, K, 1, H, W)
        diffs = [relative(out.loss_terms["nll"], nll), relative(out.loss_terms["kl_mask"], kl_m),
                 relative(out.loss_terms["kl_comp"], kl_c),
                 float((out.masks - masks).abs().max()),
                 float((out.reconstruction - recon).abs().max())]
        print(f"{name:22s} " + " ".join(f"{d:9.1e}" for d in diffs) +
              f"   ({float(nll):.1f}, {float(kl_m):.2f}, {float(kl_c):.2f})")
        rows.append(diffs)
    return [max(column) for column in zip(*rows)]


def compare_geco(ours: GENESIS, official_geco, flags: dict, size: int, steps: int) -> float:
    """Largest relative difference of beta over ``steps`` updates from the same errors: ours
    with its config defaults, theirs set up as its train.py does with its flag defaults."""
    goal = flags["g_goal"] * 3 * size ** 2
    theirs = official_geco(goal, flags["g_lr"] * (64 ** 2 / size ** 2), flags["g_alpha"],
                           flags["g_init"], flags["g_min"], flags["g_speedup"])
    ours.train()
    ours.geco_beta.fill_(ours.cfg.geco_beta_init)
    ours.geco_err_ema.fill_(float("nan"))
    noise = torch.Generator().manual_seed(0)
    worst, betas = 0.0, []
    for t in range(steps):
        # From 30% above the goal (beta shrinks) to 20% below it (beta grows, 10x faster, up
        # to its clamp at 1e10), noisy: every branch of the update.
        err = torch.tensor(goal * (1.3 - 0.5 * t / steps)) + 20 * torch.randn((), generator=noise)
        their_beta = theirs.beta.clone()      # the loss uses beta from before the update
        theirs.loss(err, torch.tensor(0.0))
        with torch.enable_grad():             # ours updates only in a training step
            our_beta = ours._kl_weight(err)
        worst = max(worst, relative(our_beta, their_beta))
        betas.append(float(their_beta))
    print(f"GECO, {steps} steps, beta from {min(betas):.1e} to {max(betas):.1e}: "
          f"largest relative difference {worst:.1e}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-src", help="checkout of applied-ai-lab/genesis")
    parser.add_argument("--size", type=int, nargs="+", default=[64, 32], choices=[32, 64],
                        help="image sizes (at 128 and up its mask strides differ from ours)")
    parser.add_argument("--slots", type=int, default=5)
    parser.add_argument("--geco-steps", type=int, default=3000)
    args = parser.parse_args()
    if not args.official_src:
        raise SystemExit("error: --official-src PATH (a checkout of applied-ai-lab/genesis) "
                         "is needed")
    src = Path(args.official_src)
    official_genesis, official_geco, defaults = import_official(src)
    geco_flags = train_py_geco_flags(src)
    warnings.filterwarnings("ignore", message="torch.meshgrid")       # raised in their decoder
    failed = False
    for size in args.size:
        torch.manual_seed(0)
        theirs = official_genesis(AttrDict(defaults, K_steps=args.slots, img_size=size,
                                           debug=False))
        randomise_norms(theirs)
        ours = GENESIS(GENESISConfig(height=size, width=size, num_slots=args.slots))
        state = ours.state_dict()             # its GECO buffers stay as initialised
        state.update(official_weights_as_ours(theirs.state_dict(), state))
        ours.load_state_dict(state)
        counts = [sum(p.numel() for p in model.parameters()) for model in (ours, theirs)]
        print(f"\n== {size}x{size}, K = {args.slots}, batch 3 ==\n"
              f"parameters: ours {counts[0]:,}, theirs {counts[1]:,}")
        worst = compare_forward(ours, theirs, size)
        worst.append(compare_geco(ours, official_geco, geco_flags, size, args.geco_steps))
        failed |= counts[0] != counts[1] or max(worst) > TOLERANCE
    print(f"\n{'FAILED' if failed else 'passed'}: tolerance {TOLERANCE:g} "
          "(relative for NLL, KLs and beta, absolute for masks and reconstruction)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
