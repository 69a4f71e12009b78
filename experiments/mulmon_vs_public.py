"""Does our MulMON learn as well as the public one? Both trained on the same scenes, scored alike.

The public model is MulMON as published at github.com/NanboLi/MulMON (models/mulmon.py with its
modules), read from --public-src: a directory with their repository layout that this script
never copies. It is imported, with the compatibility shims for its missing dependencies, by
``load_public_mulmon`` and configured by ``public_config`` of benchmarks/bench_mulmon_public.py
(the speed comparison; its docstring lists the shims); none of its code is changed.

Both train on one store, opened the way ``ldsrig train mulmon`` opens it
(lds.data.open_store_dataset: datasets.torch_data.SceneViewsDataset, --views views per scene,
shuffled per item from a seed that is a pure function of (seed, step)), with the training
loop's step sampler (lds.training.loop.StepBatchSampler), so both models get the same scenes,
the same views in the same order, every step. Per step the number of observed views is drawn
once, from our model's range (model.min_observed..max_observed = 1..6, at most views - 1), from
a generator seeded by (seed, step); the first that many views of the batch are observed, the
rest are queries, for both models. (Their forward shuffles the views and draws the number with
Python's ``random``; its ``sample_view_config`` is replaced, on the instance only, by one that
returns this split: the views are already in a random order, so the split has the same law.)
Before each model's step torch's RNG is seeded from (seed, step) as our trainer seeds it.

Same settings for both: Adam (optim.eps 1e-8, no weight decay) with our paper setting's lr
2e-4 and GQN schedule (lds.training.loop.learning_rate; their train.py's AnnealingStepLR is the
same schedule), gradient-norm clip 5.0, batch 8 scenes, K=7, D=16, T=5, pixel sigma 0.1,
viewpoint noise 0.015 (both add it in training), the same viewpoint vector (the store's, as
``ldsrig train`` resolves model.viewpoint=auto; their v_in_dim = view_dim = its size, which is
what their running config does). Theirs is driven as their trainer drives it
(trainer/model_trainer.py: ``model(images, targets, std=pixel_sigma)``, the sum of the loss
dict, clip, step) with the CLE-MV configuration of bench_mulmon_public.public_config; ours is
lds.models.MulMON without LDS (the control). ``--slots``, ``--max-observed`` and ``--amp bf16``
set K, the most views observed per step and bf16 autocast of both training forwards (as
``ldsrig train`` runs amp=bf16; evaluation stays fp32), for both alike, so that a CPU-scale study
setting (experiments/mulmon_cpu_regime.yaml) can be repeated here. Each model is initialised from torch's RNG seeded
with --seed; ``--same-init`` instead copies theirs' initial weights into ours
(``their_weights_into_ours``), so only the implementations differ.

The two training losses are the same quantity: ``--check`` copies their weights into ours, sets
every Gaussian draw to its mean and compares both losses and gradient norms on 2 scenes of
--train for every number of observed views (exit 1 above a relative 1e-4; measured: within
1.0e-6, the residue of their log(m + 1e-6) against our log m). With noise the two differ in one
estimator: their query phase draws a fresh z per query view, ours one z for all query views
(the same expectation, another variance); and the draws come in another order, so the same
seed gives other samples. Without noise the K slots start from one lambda_0 and stay equal, and
equal slots score the same under either mixture; so --check also compares both codes' 17
refinement inputs for the same random, different slots (``check_refinement_inputs``; measured:
within 4.4e-3 in the standardised dL/dm, 2e-5 elsewhere).

``--likelihood`` sets both models' mixture over the slots: ``channel`` (the default) is MulMON's
code as published, every colour channel mixing the K slots on its own; ``pixel`` mixes once per
pixel over its RGB value, the LDS paper's Eq. (1): ours as model.likelihood=pixel, theirs with
their ``Gaussian_ll`` wrapped (``mixed_per_pixel``, on their loaded module only). The same switch
made the public IODINE split the cube scenes (experiments/iodine_vs_public.py
--theirs-likelihood). --check passes with either.

Every --eval-every steps (and at step 0) both are scored on the held-out store by the same
code, lds.evaluation.evaluate (what ``ldsrig eval`` runs): the first model.eval_observed = 5
views of each scene observed (all but one with fewer), the rest queries; MSE, mIoU, ARI,
FG-ARI... on the observed views and ``query_*`` on the query views. Theirs is wrapped as
``PublicMulMONAdapter``: their inference as their ``predict`` runs it (their
``_iterative_inference`` per observed view, then each query view decoded from a sample of the
final posterior), mapped onto our output contract (lds/contract.py; views flattened into rows,
observed first, ``query_rows``). Their inference samples z at every iteration (their code has
no mean mode), and so, by default (``--ours-eval sampled``), is ours scored: ``SampledInference``
runs our model's training-mode inference without viewpoint noise on the evaluation split. With
the same weights the two evaluations agree (reconstructions within 6e-7 on the smoke stores):
the draws are seeded per evaluation batch and come in the same order. ``--ours-eval ldsrig``
scores ours in eval mode as ``ldsrig eval`` does: z sampled where it feeds a refinement (seeded
per scene) and the posterior mean where it is scored. (Until this comparison found it, ldsrig's
eval used the means throughout, and since all K slots start from one lambda_0 they stayed
identical through every refinement: one slot everywhere, FG-ARI 0 at any step; fixed in
lds/models/mulmon.py, docs/mulmon.md.)

Writes OUT/<ours|theirs>_seed<S>.jsonl, one row per evaluation: step, train_seconds (training
steps only), loss and train_query_nll (means over the training steps since the previous row;
none at step 0), lr, inference, scenes_per_s and images_per_s (scenes x views per second,
cumulative over training), and every evaluation aggregate's mean (mse, miou, fg_ari, ari, ...,
query_mse, query_fg_ari, ...); a model whose loss or gradient turned non-finite stops, and its
next row says so under "stopped"; the final weights as OUT/<who>_seed<S>_step<N>.safetensors.
--plot draws OUT/curves.png (training loss, MSE, FG-ARI and mIoU against steps, observed views
solid, query views dashed, mean +- std over seeds) and OUT/summary.json. --figure (with the
training's arguments) draws Figure 2 of each model from those final weights,
OUT/figure2_<who>_seed<S>.png: 4 held-out scenes, every view, z sampled as in the curves. With
--only both (the default) the two models' steps alternate in one process (the first of each pair
alternates too), so the machine's load hits both alike; --only ours / theirs trains one, on the same
batches and splits. --ours-run RUN_DIR, instead of training ours, scores the checkpoints of a
study's ``ldsrig train`` run on --train (trained with the settings the arguments give) the way
ours is scored here, into OUT/ours_seed<S>.jsonl (``score_run``): the same store, settings and
steps as theirs, but the trainer's batches.

Commands (the smoke run: tiny stores, 32x32, a few steps; the paper's size is 64x64, and both
codes run at 32x32 too: their refinement encoder, like ours, needs at least 31x31):

    .venv/bin/ldsrig data synth clevr-mv /tmp/mmcmp/train.zarr --scenes 4 --views 6 \\
        --min-objects 2 --max-objects 3 --seed 0
    .venv/bin/ldsrig data synth clevr-mv /tmp/mmcmp/val.zarr --scenes 4 --views 6 \\
        --min-objects 2 --max-objects 3 --seed 1
    .venv/bin/ldsrig data prepare /tmp/mmcmp/train.zarr /tmp/mmcmp/train32.zarr --size 32
    .venv/bin/ldsrig data prepare /tmp/mmcmp/val.zarr /tmp/mmcmp/val32.zarr --size 32
    mkdir -p /tmp/mulmon_public && git -C /work/.mirror/NanboLi+MulMON/repo archive HEAD \\
        -- ':(exclude)assets' | tar -x -C /tmp/mulmon_public
        # their sources (the mirror lacks the README's GIFs); never copied into this repository
    OMP_NUM_THREADS=1 .venv/bin/python experiments/mulmon_vs_public.py --check \\
        --public-src /tmp/mulmon_public --train /tmp/mmcmp/train32.zarr --views 6
    OMP_NUM_THREADS=1 .venv/bin/python experiments/mulmon_vs_public.py \\
        --public-src /tmp/mulmon_public --train /tmp/mmcmp/train32.zarr \\
        --val /tmp/mmcmp/val32.zarr --out /tmp/mmcmp/cmp --views 6 --batch 2 --steps 4 \\
        --eval-every 2 --seed 0
    .venv/bin/python experiments/mulmon_vs_public.py --out /tmp/mmcmp/cmp --plot

A real comparison: a CLE-MV-like store of many scenes at 64x64 with 10 views
(``ldsrig data synth clevr-mv ... --views 10``, or an imported CLE-MV store) and a held-out
one, the defaults --views 10 --batch 8, --steps in the tens of thousands, --eval-every 1000,
one run per --seed, then --plot over OUT.

The smoke run printed (this machine, 2 shared cores, 1 thread, torch 2.13 CPU, 22 s; 4 training
scenes; 4 held-out scenes x 6 views scored, 5 observed + 1 query each; the shims line cut):

    train /tmp/mmcmp/train32.zarr: 4 scenes x 6 views, 32x32;
          held out /tmp/mmcmp/val32.zarr: 4 scenes (scored: 4);
          viewpoint clevr-mv; Adam lr 0.0002 (gqn), clip 5.0, batch 2 scenes, 4 steps, 1 thread(s)
    public sources: /tmp/mulmon_public; shims: attrdict.AttrDict (...)
    ours  : 340599 parameters
    theirs: 340599 parameters
    ours   seed 0 step 0: mse 0.1705, fg_ari 0.1028, miou 0.1999,
            query_mse 0.1623, query_fg_ari 0.1542
    theirs seed 0 step 0: mse 0.2833, fg_ari 0.0352, miou 0.2410,
            query_mse 0.2723, query_fg_ari 0.3461
    ours   seed 0 step 2: loss 41669.6230, mse 0.1608, fg_ari 0.0603, miou 0.2309,
            query_mse 0.1491, query_fg_ari 0.0000, 2.014 scenes/s
    theirs seed 0 step 2: loss 75645.0742, mse 0.2577, fg_ari 0.0894, miou 0.2482,
            query_mse 0.2327, query_fg_ari 0.1489, 1.517 scenes/s
    ours   seed 0 step 4: loss 39939.3789, mse 0.1465, fg_ari 0.0801, miou 0.2331,
            query_mse 0.1274, query_fg_ari 0.0312, 2.300 scenes/s
    theirs seed 0 step 4: loss 70770.4531, mse 0.2073, fg_ari 0.0307, miou 0.2579,
            query_mse 0.1448, query_fg_ari 0.0000, 1.725 scenes/s
    wrote /tmp/mmcmp/cmp/ours_seed0.jsonl and /tmp/mmcmp/cmp/ours_seed0_step4.safetensors
    wrote /tmp/mmcmp/cmp/theirs_seed0.jsonl and /tmp/mmcmp/cmp/theirs_seed0_step4.safetensors
    wrote /tmp/mmcmp/cmp/curves.png and /tmp/mmcmp/cmp/summary.json
    (then --plot: wrote /tmp/mmcmp/cmp/curves.png and /tmp/mmcmp/cmp/summary.json)

and --check printed "largest relative difference 1.0e-06 (tolerance 1e-04)" (losses 71472 to
86420 for 1..5 observed views). The two losses above differ by initialisation alone: at step 0
the held-out MSE over init seeds 0..3 is 0.17 / 0.34 / 0.18 / 0.36 for ours and 0.28 / 0.28 /
0.35 / 0.33 for theirs (no systematic offset). With --same-init both score the same at step 0 (mse 0.2833,
fg_ari 0.0352, query_fg_ari 0.3461) and reach training losses 76100 / 71039 (ours) against
75645 / 70771 (theirs) at steps 2 / 4. Four steps on four scenes say nothing about which learns
better; they show that the pipeline runs end to end.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from operator import attrgetter
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from bench_mulmon_public import PUBLIC_FILES, load_public_mulmon, public_config  # noqa: E402
from common.errors import UserError  # noqa: E402
from lds.contract import ModelOutput  # noqa: E402
from seed_curves import plot_comparison, require_stores  # noqa: E402  (experiments/)
from side_by_side import Trainee, run_settings, train_alternating  # noqa: E402  (experiments/)

WHO = ("ours", "theirs")
LABELS = {"ours": "ldsrig MulMON", "theirs": "NanboLi/MulMON (public)"}
PANELS = (("loss", "training loss", None), ("mse", "MSE", "query_mse"),
          ("fg_ari", "FG-ARI", "query_fg_ari"), ("miou", "mIoU", "query_miou"))
CHECK_TOLERANCE = 1e-4   # their masks enter the likelihood as log(m + 1e-6), ours as log m
PRINTED = ("loss", "mse", "fg_ari", "miou", "query_mse", "query_fg_ari")


# ---- the public MulMON ------------------------------------------------------------------------

def mixed_per_pixel(gaussian_ll):
    """Their ``Gaussian_ll`` (models/modules.py) with the K slots mixed once per pixel: their own
    per-channel log N terms summed over the colour channels before their logsumexp over the
    slots, masks entering as their log(m + 1e-6). Returns what theirs returns: the mixture
    log-likelihood (B, 1, 1, H, W), one channel where theirs has three, and the per-channel terms.
    Every caller in their mulmon.py only sums the first over its channels (the loss, and the
    refinement's pixel-likelihood input), so that input becomes the per-pixel mixture's likelihood."""
    def per_pixel(x_col, _x, masks, std):
        _, log_pxz = gaussian_ll(x_col, _x, masks, std)
        mixed = torch.logsumexp((masks + 1e-6).log() + log_pxz.sum(2, keepdim=True), dim=1,
                                keepdim=True)
        return mixed, log_pxz
    return per_pixel


def set_their_likelihood(kind: str) -> None:
    """``channel``: their published per-channel mixture; ``pixel``: ``mixed_per_pixel``. Set on
    their loaded module's namespace (their mulmon.py calls ``Gaussian_ll`` by name); their files
    stay unchanged."""
    their_model, their_modules = sys.modules["models.mulmon"], sys.modules["models.modules"]
    published = their_modules.Gaussian_ll
    their_model.Gaussian_ll = published if kind == "channel" else mixed_per_pixel(published)


def public_mulmon(src: Path, size: int, viewpoint_size: int, lr: float, num_slots: int = 7,
                  likelihood: str = "channel"):
    """Their MulMON in training mode, configured as bench_mulmon_public configures it (CLE-MV
    settings), for ``size`` x ``size`` images, ``num_slots`` slots and viewpoint vectors of
    ``viewpoint_size``, with the slots mixed per ``likelihood`` (``set_their_likelihood``) and its
    view split set per step by the returned ``split`` (``split["observed"]``)."""
    PublicMulMON, CONFIG, shims = load_public_mulmon(src)
    set_their_likelihood(likelihood)
    cfg = public_config(CONFIG, SimpleNamespace(observed=1, size=size))
    cfg.v_in_dim = cfg.view_dim = viewpoint_size   # their running config: view_dim = v_in_dim
    cfg.lr_rate = lr
    cfg.num_slots = num_slots                      # their K (train.py's --num_slots)
    model = PublicMulMON(cfg).train()
    split = {"observed": 1}

    def sample_view_config(num_views, *_limits, **_options):
        n = split["observed"]                      # the first n views observed, the rest queries
        return list(range(n)), list(range(n, num_views))

    model.sample_view_config = sample_view_config  # this instance only; their file is unchanged
    return model, cfg, split, shims


class PublicMulMONAdapter(torch.nn.Module):
    """Their inference, as their ``predict`` runs it, on our output contract.

    ``forward(batch)``: batch["image"] (S, V, 3, H, W), batch["viewpoint"] (S, V, v); the first
    ``min(eval_observed, V - 1)`` views are observed (our evaluation's split), the rest queries.
    Observed views: their ``_iterative_inference`` (T iterations, T - 1 refinements) on each in
    turn, the rendering of its last iteration. Query views: their projector and decoder on a
    sample of the final posterior, one draw per query view as in their ``predict``. Rows:
    scenes x views, observed first (lds.contract).
    Latents: the posterior mean after each observed view (their z samples are internal), the
    drawn sample for the query views.
    """

    input_keys = ("image", "viewpoint")
    item_kind = "scenes"

    def __init__(self, model, eval_observed: int):
        super().__init__()
        self.model, self.eval_observed = model, eval_observed
        self.num_slots = model.K

    def output_rows(self, batch: dict) -> int:
        return int(batch["image"].shape[0] * batch["image"].shape[1])

    def forward(self, batch: dict, num_observed: int | None = None) -> ModelOutput:
        image, viewpoint = batch["image"], batch["viewpoint"]
        s, v = image.shape[:2]
        if num_observed is None:
            num_observed = min(self.eval_observed, v - 1) if v > 1 else 1
        with torch.enable_grad():                  # their refinement takes gradients
            return self._predict(image, viewpoint.to(image.dtype), num_observed)

    def _predict(self, image, viewpoint, num_observed: int) -> ModelOutput:
        m = self.model
        s, v, _, h, w = image.shape
        k, d = m.K, m.z_dim
        lmbda = m.lmbda0.expand((s * k,) + m.lmbda0.shape[1:])
        v_feat = m.view_encoder(viewpoint.reshape(s * v, -1))
        v_feat = v_feat.reshape(s, v, -1).unsqueeze(1).repeat(1, k, 1, 1)
        views = []                                 # (mask logits, RGB means, latents, lambda)
        for view in range(num_observed):
            _, lmbda, logits, mu_x = m._iterative_inference(image[:, view], v_feat[:, :, view, :],
                                                            lmbda, m.nit_innerloop)
            # The same values; each view's graph is freed (their predict keeps it growing).
            lmbda = lmbda.detach().requires_grad_()
            views.append((logits.detach(), mu_x.detach(), lmbda.detach().chunk(2, dim=1)[0],
                          lmbda.detach()))
        with torch.no_grad():
            lam = lmbda.detach()
            mu_z, logvar_z = lam.chunk(2, dim=1)
            for view in range(num_observed, v):   # as their predict: one draw per query view
                z = torch.distributions.Normal(mu_z, torch.exp(0.5 * logvar_z)).rsample()
                z_yq = m.projector(torch.cat((z, v_feat[:, :, view, :].reshape(s * k, -1)), dim=-1))
                logits, mu_x = m.decode(z_yq)
                views.append((logits, mu_x, z, lam))

        def rows(index: int, shape: tuple) -> torch.Tensor:
            parts = [part[index].reshape(s, k, *shape) for part in views]
            return torch.stack(parts, 1).flatten(0, 1)

        logits, means = rows(0, (1, h, w)), rows(1, (3, h, w))
        lam_rows = rows(3, (2 * d,))
        masks = torch.softmax(logits, dim=1)
        query = torch.zeros(s, v, dtype=torch.bool, device=image.device)
        query[:, num_observed:] = True
        zero = image.new_zeros(())
        out = ModelOutput(zero, {"loss": zero}, rows(2, (d,)), lam_rows[..., :d], lam_rows[..., d:],
                          logits, masks, means, (masks * means).sum(dim=1),
                          query_rows=query.flatten())
        return out.check(s * v, k, h, w).detached()


def their_weights_into_ours(theirs, ours) -> None:
    """Copy the public model's parameters into ours (same architecture: bench_mulmon_public).
    Two layouts differ: their decoder's coordinate channels are (y, x), ours (x, y); their
    LSTM input is [lambda moments, image features], ours [image features, lambda moments]."""
    d = ours.cfg.latent_dim
    flip_coords = lambda w: torch.cat([w[:, :-2], w[:, -2:].flip(1)], 1)         # noqa: E731
    lstm_input = lambda w: torch.cat([w[:, 4 * d:], w[:, :4 * d]], 1)            # noqa: E731
    names = {"initial_posterior": ("lmbda0", lambda w: w.view(1, 1, -1))}
    for p in ("weight", "bias"):
        for i in (0, 2):
            names[f"view_encoder.{i}.{p}"] = (f"view_encoder.{i}.{p}", None)
            names[f"projector.{i}.{p}"] = (f"projector.{i}.{p}", None)
        for i in range(4):
            first = flip_coords if (i, p) == (0, "weight") else None
            names[f"decoder.convs.{i}.{p}"] = (f"decoder.convs.{2 * i}.{p}", first)
            names[f"refine.convs.{2 * i}.{p}"] = (f"refine_net.convnet.convs.{2 * i}.{p}", None)
        names[f"decoder.head.{p}"] = (f"decoder.convs.8.{p}", None)
        names[f"refine.mlp.1.{p}"] = (f"refine_net.convnet.mlp.0.{p}", None)
        names[f"refine.mlp.3.{p}"] = (f"refine_net.convnet.mlp.2.{p}", None)
        names[f"refine.head.{p}"] = (f"refine_net.fc_out.{p}", None)
    for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        convert = lstm_input if p == "weight_ih" else None
        names[f"refine.lstm.{p}"] = (f"refine_net.lstm.{p}", convert)
    own, their = dict(ours.named_parameters()), dict(theirs.named_parameters())
    if set(own) != set(names) or {n for n, _ in names.values()} != set(their):
        raise RuntimeError("the parameter names no longer match the public MulMON's")
    with torch.no_grad():
        for name, (source, convert) in names.items():
            weight = their[source].detach()
            own[name].copy_(convert(weight) if convert else weight)


@contextlib.contextmanager
def without_noise():
    """Every Gaussian draw at its mean (torch.randn_like -> 0, Normal.rsample -> loc), for
    --check: both models' viewpoint noise and z samples."""
    normal = torch.distributions.Normal
    randn_like, rsample = torch.randn_like, normal.rsample
    torch.randn_like = lambda x, *a, **k: torch.zeros_like(x, dtype=k.get("dtype") or x.dtype)
    normal.rsample = lambda self, shape=torch.Size(): self.loc.expand(self._extended_shape(shape))
    try:
        yield
    finally:
        torch.randn_like, normal.rsample = randn_like, rsample


def check(args) -> None:
    """Same weights (theirs copied into ours), no noise, the same 2 scenes of --train: the two
    training losses (and gradient norms) for each number of observed views. Exits 1 when a
    relative difference exceeds CHECK_TOLERANCE."""
    from lds.data import open_store_dataset
    from lds.models import build_model
    from lds.training.config import load_train_config
    from lds.training.loop import KeyCollate

    torch.set_num_threads(args.threads)
    cfg = load_train_config("mulmon", None, [f"model.num_views={args.views}",
                                             f"model.viewpoint={args.viewpoint}",
                                             f"model.likelihood={args.likelihood}"])
    data = open_store_dataset(args.train, cfg.model)
    cfg.model.height, cfg.model.width = data[0]["image"].shape[-2:]
    batch = KeyCollate(("image", "viewpoint"))([data[(i, i)] for i in range(min(2, len(data)))])
    torch.manual_seed(args.seed)
    theirs, their_cfg, split, _ = public_mulmon(Path(args.public_src), cfg.model.height,
                                                cfg.model.viewpoint_size, args.lr,
                                                likelihood=args.likelihood)
    ours = build_model(cfg.model).train()
    their_weights_into_ours(theirs, ours)
    worst = 0.0
    print(f"same weights, no noise, {batch['image'].shape[0]} scenes x {data.num_views} views, "
          f"{cfg.model.height}x{cfg.model.width}, mixture per {args.likelihood}:")
    for observed in range(1, data.num_views):
        split["observed"] = observed
        values = {}
        for who, model in (("theirs", theirs), ("ours", ours)):
            model.zero_grad(set_to_none=True)
            with without_noise():
                if who == "ours":
                    loss = model(batch, num_observed=observed).loss
                else:
                    targets = [{"view_points": v} for v in batch["viewpoint"].unbind(0)]
                    loss = sum(model(list(batch["image"].unbind(0)), targets,
                                     std=their_cfg.pixel_sigma).values())
            loss.backward()
            norm = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in model.parameters()
                                  if p.grad is not None))
            values[who] = (float(loss.detach()), float(norm))
        rel = [abs(a - b) / abs(a) for a, b in zip(values["theirs"], values["ours"])]
        worst = max(worst, *rel)
        print(f"  {observed} observed: loss theirs {values['theirs'][0]:.4f} ours "
              f"{values['ours'][0]:.4f} (relative difference {rel[0]:.1e}); gradient norm "
              f"theirs {values['theirs'][1]:.4f} ours {values['ours'][1]:.4f} ({rel[1]:.1e})")
    print(f"largest relative difference {worst:.1e} (tolerance {CHECK_TOLERANCE:.0e})")
    # Without noise every slot starts from the one lambda_0 and stays equal, and with equal
    # slots both mixtures score the same: the loss check above cannot tell them apart.
    inputs_worst = check_refinement_inputs(theirs, ours, their_cfg.pixel_sigma, args.seed)
    if worst > CHECK_TOLERANCE or inputs_worst > INPUTS_TOLERANCE:
        sys.exit(1)


REFINE_CHANNELS = (("x", 3), ("mu_x", 3), ("mask", 1), ("mask logit", 1), ("LN dL/dmu", 3),
                   ("LN dL/dm", 1), ("colour likelihood", 1), ("LN pixel likelihood", 1),
                   ("LN leave-one-out", 1), ("coordinates", 2))
# Standardised inputs (unit scale). Measured: 4.4e-3 in LN dL/dm, their gradient taken through
# log(m + 1e-6), ours through log m; 1e-5 elsewhere. A per-channel pixel-likelihood input
# under the per-pixel loss differs by 1.4.
INPUTS_TOLERANCE = 1e-2


def check_refinement_inputs(theirs, ours, sigma: float, seed: int) -> float:
    """Both codes' 17 refinement input channels for the same random slots (decoded means,
    mask logits: every slot different, which the losses without noise never reach), each code's
    loss and gradients taken its own way: their ``get_refine_inputs`` on their ``Gaussian_ll``
    (as set by --likelihood) against our ``_refinement_inputs``. Prints the largest absolute
    difference per input and returns the largest."""
    their_module = sys.modules["models.mulmon"]
    gen = torch.Generator().manual_seed(seed)
    n, k, d = 2, ours.num_slots, ours.cfg.latent_dim
    h, w = ours.cfg.height, ours.cfg.width
    # Slots near the image and masks above 1e-3: where a mask is far below their 1e-6, their
    # log(m + 1e-6) and our log m weigh that slot differently (a different function, not a bug).
    image = torch.rand(n, 3, h, w, generator=gen)
    means = (image[:, None] + 0.1 * torch.randn(n, k, 3, h, w, generator=gen)).requires_grad_()
    logits = torch.randn(n, k, 1, h, w, generator=gen).requires_grad_()
    lmbda = torch.randn(n * k, 2 * d, generator=gen).requires_grad_()
    with torch.enable_grad():
        masks = torch.softmax(logits, dim=1)
        image_k = image[:, None].expand(n, k, 3, h, w)
        ll_pixel, ll_colour = their_module.Gaussian_ll(means, image_k, masks, sigma)
        loss = -ll_pixel.flatten(1).sum(-1).mean() + lmbda.pow(2).sum()   # lambda in the graph
        their_inputs = theirs.get_refine_inputs(image_k, means, masks, logits, ll_pixel, lmbda,
                                                loss, ll_colour)["img"].view(n, k, 17, h, w)
        log_masks = torch.log_softmax(logits, dim=1)
        log_comp = ours._log_components(image[:, None], means[:, None])[:, 0]
        our_loss = ours._nll(log_comp[:, None], log_masks[:, None]).mean()
        d_means, d_log_masks = torch.autograd.grad(our_loss, (means, log_masks))
        our_inputs = ours._refinement_inputs(image, means, log_masks, logits, log_comp, d_means,
                                             d_log_masks).view(n, k, 17, h, w)
    worst, start, parts = 0.0, 0, []
    for name, size in REFINE_CHANNELS:
        diff = float((their_inputs[:, :, start:start + size]
                      - our_inputs[:, :, start:start + size]).detach().abs().max())
        worst, start = max(worst, diff), start + size
        parts.append(f"{name} {diff:.1e}")
    print(f"refinement inputs, {n} images x {k} different slots: largest absolute difference "
          f"{'; '.join(parts)} (tolerance {INPUTS_TOLERANCE:.0e})")
    return worst


class SampledInference(torch.nn.Module):
    """Our MulMON scored with z sampled at every iteration and for the query views, as MulMON's
    ``predict`` (and so ``PublicMulMONAdapter``) infers: the model in training mode without its
    viewpoint noise, on the evaluation split, outputs detached. (In eval mode ours decodes the
    posterior means, and every slot starts from the same lambda_0, so its K slots stay equal and
    the segmentation is one slot everywhere; see --ours-eval.)"""

    input_keys = ("image", "viewpoint")
    item_kind = "scenes"

    def __init__(self, model):
        super().__init__()
        self.model, self.num_slots = model, model.num_slots

    def output_rows(self, batch: dict) -> int:
        return self.model.output_rows(batch)

    def forward(self, batch: dict) -> ModelOutput:
        model, views = self.model, batch["image"].shape[1]
        noise = model.cfg.viewpoint_noise
        model.train()
        model.cfg.viewpoint_noise = 0.0
        try:
            out = model(batch, num_observed=model.gap_observed_views(views))  # eval split
        finally:
            model.cfg.viewpoint_noise = noise
        return out.detached()


# ---- training both the same way ------------------------------------------------------------------

def comparison_setting(args):
    """Our training config for the arguments, the training store (which resolves
    model.viewpoint and the image size) and the held-out store, opened as ``train`` opens them."""
    from lds.data import open_eval_dataset, open_store_dataset
    from lds.training.config import load_train_config

    require_stores(train=args.train, val=args.val)
    cfg = load_train_config("mulmon", None, [
        f"model.num_views={args.views}", f"model.viewpoint={args.viewpoint}",
        f"model.num_slots={args.slots}", f"model.likelihood={args.likelihood}",
        *([f"model.max_observed={args.max_observed}"] if args.max_observed else []),
        f"optim.lr={args.lr}", f"optim.batch_size={args.batch}", f"optim.steps={args.steps}",
        f"optim.grad_clip={args.clip}", f"optim.schedule={args.schedule}", f"seed={args.seed}",
        f"amp={args.amp}"])
    train_set = open_store_dataset(args.train, cfg.model)     # resolves model.viewpoint
    cfg.model.height, cfg.model.width = train_set[0]["image"].shape[-2:]
    val_set = open_eval_dataset(args.val, cfg.model)           # same size, store view order
    return cfg, train_set, val_set


def figures(args, out: Path, num_scenes: int = 4) -> None:
    """Figure 2 of each model from its final weights in OUT (``<who>_seed<S>_step<steps>``, the
    same arguments as its training): ``num_scenes`` held-out scenes spread over --val-scenes,
    every view (the first eval_observed observed, the rest queries), each model scored the way
    its curves were (z sampled), torch seeded with --seed. Writes OUT/figure2_<who>_seed<S>.png."""
    from safetensors.torch import load_file

    from lds.evaluation.figures import figure2_for_dataset
    from lds.models import build_model

    torch.set_num_threads(args.threads)
    cfg, _, val_set = comparison_setting(args)
    drawn = 0
    for who in WHO:
        weights = out / f"{who}_seed{args.seed}_step{args.steps}.safetensors"
        if not weights.is_file():
            continue
        if who == "ours":
            model = build_model(cfg.model)
            shown = SampledInference(model)
        else:
            check_sources(args)
            model, *_ = public_mulmon(Path(args.public_src), cfg.model.height,
                                      cfg.model.viewpoint_size, args.lr, args.slots,
                                      args.likelihood)
            shown = PublicMulMONAdapter(model, cfg.model.eval_observed)
        model.load_state_dict(load_file(str(weights)))
        torch.manual_seed(args.seed)
        path = figure2_for_dataset([shown], val_set, num_scenes,
                                   out / f"figure2_{who}_seed{args.seed}.png",
                                   limit=args.val_scenes)
        print(f"wrote {path} ({LABELS[who]}, step {args.steps})", flush=True)
        drawn += 1
    if not drawn:
        raise UserError(f"no final weights (<who>_seed{args.seed}_step{args.steps}.safetensors) "
                        f"in {out}")


# Settings an --ours-run must share with the arguments: what the two models were trained with.
RUN_SETTINGS = ("model.num_slots", "model.num_views", "model.max_observed", "model.likelihood",
                "model.viewpoint", "model.height", "model.width", "optim.lr", "optim.batch_size",
                "optim.schedule", "optim.grad_clip", "amp", "lds.enabled")


def score_run(args, out: Path) -> None:
    """Ours as ``ldsrig train`` trained it (a study's run on --train): every checkpoint of
    --ours-run scored as ours is scored in training here (z sampled, the same held-out scenes and
    evaluation batches), with the run's mean training loss and query NLL since the previous
    checkpoint, into OUT/ours_seed<S>.jsonl (S: the run's seed). Saves training ours a second
    time when the run exists; its batches are its trainer's, not the ones theirs got here (the
    same store, settings and steps). Refused, with the differing settings named, when the run
    was trained otherwise than the arguments say."""
    from lds.training.checkpoint import list_checkpoints
    from lds.training.logging import read_metrics
    from lds.training.loop import learning_rate
    from lds.training.runs import CHECKPOINT_DIR, RunError, load_run, read_run_config
    from side_by_side import append_row, scores

    torch.set_num_threads(args.threads)
    run = Path(args.ours_run)
    try:
        run_cfg = read_run_config(run)
    except RunError as error:
        raise UserError(str(error)) from None
    cfg, _, val_set = comparison_setting(args)
    if run_cfg.model.name != "mulmon":
        raise UserError(f"--ours-run {run} trained {run_cfg.model.name}, not mulmon")

    differ = [f"{name} {attrgetter(name)(run_cfg)!r} (here {attrgetter(name)(cfg)!r})"
              for name in RUN_SETTINGS if attrgetter(name)(run_cfg) != attrgetter(name)(cfg)]
    if Path(run_cfg.data).resolve() != Path(args.train).resolve():
        differ.append(f"data {run_cfg.data} (here {args.train})")
    if differ:
        raise UserError(f"--ours-run {run} was trained otherwise: {'; '.join(differ)}")
    steps = [s for s in list_checkpoints(run / CHECKPOINT_DIR) if s <= args.steps]
    if not steps:
        raise UserError(f"--ours-run {run} has no checkpoint up to step {args.steps}")
    logged = read_metrics(run)          # no log: rows without the training loss
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ours_seed{run_cfg.seed}.jsonl"
    path.write_text("")
    previous = 0
    for step in steps:
        model, _ = load_run(run, step=step)
        window = [row for row in logged if previous < row["step"] <= step]
        row = {"step": step, "lr": learning_rate(run_cfg, step), "inference": "sampled z",
               "trained_by": f"ldsrig train ({run.name})"}
        if window:                       # the trainer logs means over log.every steps
            row["loss"] = sum(r["loss"] for r in window) / len(window)
            row["train_query_nll"] = sum(r["query_nll"] for r in window) / len(window)
        row.update(scores(SampledInference(model), val_set, args.val_scenes, args.eval_batch))
        append_row(path, row, "ours", run_cfg.seed, PRINTED)
        previous = step
    print(f"wrote {path}", flush=True)


def train(args, out: Path) -> None:
    from lds.models import build_model
    from lds.training.loop import KeyCollate, StepBatchSampler, keep_freed_memory, step_seed

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    cfg, train_set, val_set = comparison_setting(args)
    size = (cfg.model.height, cfg.model.width)
    views = train_set.num_views
    out.mkdir(parents=True, exist_ok=True)
    print(f"train {args.train}: {len(train_set)} scenes x {views} views, {size[0]}x{size[1]}; "
          f"held out {args.val}: {len(val_set)} scenes (scored: "
          f"{min(args.val_scenes, len(val_set))});"
          f" viewpoint {cfg.model.viewpoint}; mixture per {args.likelihood}; Adam lr {args.lr} "
          f"({args.schedule}), clip {args.clip}, batch {args.batch} scenes, {args.steps} steps, {args.threads} thread(s)",
          flush=True)

    who_list = list(WHO) if args.only == "both" else [args.only]
    speeds = {"scenes_per_s": args.batch, "images_per_s": args.batch * views}
    trainees = {}
    for who in who_list:
        torch.manual_seed(args.seed)               # each model's initialisation from the seed
        if who == "ours":
            model = build_model(cfg.model).train()

            def loss_of(batch, n, model=model):
                out = model(batch, num_observed=n)
                return out.loss, {"train_query_nll": out.loss_terms["query_nll"].detach()}
            evaluated = SampledInference(model) if args.ours_eval == "sampled" else model
            inference = "sampled z" if args.ours_eval == "sampled" else "posterior means"
            trainees[who] = Trainee(who, model, evaluated, loss_of, cfg, out, args.seed,
                                    {"inference": inference}, speeds, PRINTED)
        else:
            if not args.public_src:
                raise UserError("--public-src DIR (the public MulMON sources, their repository "
                                "layout) is needed to train theirs")
            theirs, their_cfg, split, shims = public_mulmon(Path(args.public_src), size[0],
                                                           cfg.model.viewpoint_size, args.lr,
                                                           args.slots, args.likelihood)
            print(f"public sources: {args.public_src}; shims: {'; '.join(shims)}", flush=True)

            def loss_of(batch, n, theirs=theirs, split=split, sigma=their_cfg.pixel_sigma):
                split["observed"] = n
                targets = [{"view_points": vp} for vp in batch["viewpoint"].unbind(0)]
                loss_dict = theirs(list(batch["image"].unbind(0)), targets, std=sigma)
                return sum(loss_dict.values()), {"train_query_nll": loss_dict["query_nll"].detach()}
            adapter = PublicMulMONAdapter(theirs, cfg.model.eval_observed)
            trainees[who] = Trainee(who, theirs, adapter, loss_of, cfg, out, args.seed,
                                    {"inference": "sampled z"}, speeds, PRINTED)
    if args.same_init and len(trainees) == 2:
        their_weights_into_ours(trainees["theirs"].model, trainees["ours"].model)
        print("same initial weights: theirs copied into ours", flush=True)
    for trainee in trainees.values():
        print(f"{trainee.who:6s}: {sum(p.numel() for p in trainee.params)} parameters", flush=True)

    collate = KeyCollate(("image", "viewpoint"))
    lo, hi = cfg.model.observed_range(views)

    def batches(start: int):
        sampler = StepBatchSampler(len(train_set), args.batch, args.seed, start, args.steps,
                                   item_seeds=True)
        for step, items in enumerate(sampler, start=start):
            # the observed/query split: drawn once per step for both models
            draw = torch.Generator().manual_seed(step_seed(args.seed + 15485863, step))
            yield (collate([train_set[item] for item in items]),
                   int(torch.randint(lo, hi + 1, (), generator=draw)))

    train_alternating(trainees, batches, args.steps, args.eval_every, val_set, args.val_scenes,
                      args.eval_batch, args.seed, out, run_settings(args), args.resume)


# ---- curves -------------------------------------------------------------------------------------

def plot(out: Path) -> None:
    plot_comparison(out, LABELS, PANELS, "scenes_per_s")


def check_sources(args) -> None:
    """One clear line, before any store is read, when --public-src is missing or incomplete."""
    if not args.public_src:
        raise UserError("--public-src DIR (the public MulMON sources, their repository layout) "
                        "is needed; --only ours trains ours alone")
    src = Path(args.public_src)
    if not src.is_dir():
        raise UserError(f"--public-src {src} is not a directory")
    absent = [f for f in PUBLIC_FILES if not (src / f).is_file()]
    if absent:
        raise UserError(f"--public-src {src} lacks {', '.join(absent)} (the layout of "
                        "github.com/NanboLi/MulMON)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--public-src", help="directory with the public MulMON sources "
                                             "(their repository layout)")
    parser.add_argument("--train", help="multi-view training store")
    parser.add_argument("--val", help="held-out multi-view store, scored every --eval-every steps")
    parser.add_argument("--out", help="directory for the curves (and --plot's figure)")
    parser.add_argument("--only", choices=["both", *WHO], default="both")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--val-scenes", type=int, default=50, help="held-out scenes scored")
    parser.add_argument("--eval-batch", type=int, default=4, help="scenes per evaluation batch")
    parser.add_argument("--views", type=int, default=10, help="views per scene (observed + query)")
    parser.add_argument("--batch", type=int, default=8, help="scenes per step")
    parser.add_argument("--slots", type=int, default=7, help="K, for both models")
    parser.add_argument("--max-observed", type=int, default=None,
                        help="most views observed in a training step (ours' model.max_observed; "
                             "the split is drawn once for both)")
    parser.add_argument("--amp", choices=["off", "bf16"], default="off",
                        help="both training forwards under bf16 autocast (ldsrig's amp=bf16); "
                             "evaluation stays fp32")
    parser.add_argument("--likelihood", choices=["channel", "pixel"], default="channel",
                        help="both models' mixture over the slots: per colour channel (MulMON's "
                             "code) or per pixel (the LDS paper's Eq. 1; ours' model.likelihood, "
                             "theirs through mixed_per_pixel)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--schedule", choices=["gqn", "constant"], default="gqn")
    parser.add_argument("--clip", type=float, default=5.0)
    parser.add_argument("--viewpoint", choices=["auto", "clevr-mv", "pose"], default="auto")
    parser.add_argument("--ours-eval", choices=["sampled", "ldsrig"], default="sampled",
                        help="how ours is scored: z sampled as MulMON's predict samples it (as "
                             "theirs is scored), or in eval mode as `ldsrig eval` runs it "
                             "(seeded samples in refinement, means where scored)")
    parser.add_argument("--ours-run", metavar="RUN_DIR",
                        help="instead of training ours: score the checkpoints of this `ldsrig "
                             "train` MulMON run (trained on --train with these settings) as ours "
                             "is scored here, into OUT/ours_seed<S>.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--same-init", action="store_true",
                        help="start ours from theirs' initial weights (with --only both)")
    parser.add_argument("--resume", action="store_true",
                        help="continue OUT's run from the state saved at its last evaluation "
                             "(the same arguments; --steps may be larger)")
    parser.add_argument("--plot", action="store_true", help="only draw the curves of OUT")
    parser.add_argument("--figure", action="store_true",
                        help="only draw Figure 2 of each model from its final weights in OUT "
                             "(the same arguments as the training)")
    parser.add_argument("--check", action="store_true",
                        help="only compare both losses with the same weights and no noise")
    args = parser.parse_args()
    if args.check:
        check_sources(args)
        if not args.train or not Path(args.train).exists():
            raise UserError(f"--check needs --train STORE (got {args.train})")
        check(args)
        return
    if not args.out:
        raise UserError("--out DIR is needed")
    out = Path(args.out)
    if args.plot or args.figure:
        if not out.is_dir():
            raise UserError(f"--out {out} does not exist")
        if args.plot:
            plot(out)
        else:
            figures(args, out)
        return
    if args.ours_run:
        score_run(args, out)
        return
    if args.steps < 1 or args.eval_every < 1 or args.batch < 1 or args.val_scenes < 1:
        raise UserError("--steps, --eval-every, --batch and --val-scenes must be positive")
    if args.only != "ours":
        check_sources(args)
    if args.same_init and args.only != "both":
        raise UserError("--same-init needs both models (--only both)")
    train(args, out)
    plot(out)


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        sys.exit(f"error: {error}")
