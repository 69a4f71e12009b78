"""Training ours and a public model side by side, as the *_vs_public.py comparisons do: one model's
step on a batch (seeded, scheduled and clipped as ldsrig's trainer does it) and its curve file,
one JSON row per evaluation by lds.evaluation.evaluate.

A comparison at the studies' budget (4000 steps of two models) outlasts a working session, so
after every evaluation all models' weights, optimiser states and clocks go into one state file,
replaced atomically; ``--resume`` continues from it. Every step's randomness is a function of
(seed, step) and the learning rate of the step alone, so a resumed run takes the steps an
uninterrupted one takes (tests/test_side_by_side.py)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import torch

from common.errors import UserError


class Trainee:
    """One model's training state: its step, its running numbers, its curve file.

    ``loss_of(*inputs)`` returns the training loss and a dict of other per-step numbers (their
    means since the last row are recorded under the same names). ``labels``: fixed fields of
    every row (how it is scored).
    ``items_per_step``: speed fields (name -> items per step), e.g. images_per_s: 8."""

    def __init__(self, who: str, model, evaluated, loss_of, cfg, out: Path, seed: int,
                 labels: dict, items_per_step: dict[str, int], printed: tuple[str, ...]):
        from lds.training.loop import make_optimizer

        self.who, self.model, self.evaluated, self.loss_of = who, model, evaluated, loss_of
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(cfg, self.params)   # Adam(lr, eps) for both
        self.cfg, self.labels, self.items_per_step = cfg, labels, items_per_step
        self.printed = printed
        self.path = out / f"{who}_seed{seed}.jsonl"
        self.seconds, self.window, self.stopped = 0.0, [], None

    def step(self, step: int, seed: int, *inputs) -> None:
        """One training step: seed, learning rate, forward (under bf16 autocast where the run's
        config says amp=bf16, as ldsrig's trainer runs it), backward, clip, step. A non-finite
        loss or gradient norm (or a failed assertion in public code) stops this model."""
        from lds.training.loop import learning_rate, step_seed

        if self.stopped:
            return
        torch.manual_seed(step_seed(seed, step))   # as our trainer seeds step `step`
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg, step)
        started = time.perf_counter()
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if self.cfg.amp == "bf16"
                    else contextlib.nullcontext())
        try:
            with autocast:
                loss, numbers = self.loss_of(*inputs)
        except AssertionError as error:            # public code asserting a finite posterior
            self.stopped = f"step {step + 1}: {error}"
            return
        # After the forward pass, as zhixuan-lin/IODINE's train.py does: its forward runs backward
        # passes of its own, whose gradients must not join the step's. The other models' forwards
        # leave no gradients (autograd.grad), so for them either order is the same.
        self.optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        grad_norm = math.nan
        if math.isfinite(value):
            loss.backward()
            clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        if not (math.isfinite(value) and math.isfinite(grad_norm)):
            self.stopped = f"step {step + 1}: non-finite loss {value} or gradient norm {grad_norm}"
            self.optimizer.zero_grad(set_to_none=True)
            return
        self.optimizer.step()
        self.seconds += time.perf_counter() - started
        self.window.append({"loss": value, **{k: float(v) for k, v in numbers.items()}})

    def record(self, step: int, val_set, max_items: int, eval_batch: int, seed: int) -> None:
        """Score the model on ``val_set`` (its first ``max_items`` items) and append a row."""
        from lds.training.loop import learning_rate

        row: dict = {"step": step, "train_seconds": round(self.seconds, 3)}
        for key in self.window[0] if self.window else ():
            row[key] = sum(w[key] for w in self.window) / len(self.window)
        if self.seconds:
            row.update({name: step * items / self.seconds
                        for name, items in self.items_per_step.items()})
        row["lr"] = learning_rate(self.cfg, step)
        row.update(self.labels)
        if self.stopped:
            row["stopped"] = self.stopped
        else:
            row.update(scores(self.evaluated, val_set, max_items, eval_batch))
            self.model.train()
        self.window = []
        append_row(self.path, row, self.who, seed, self.printed, self.items_per_step,
                   self.stopped)


def scores(evaluated, val_set, max_items: int, eval_batch: int) -> dict:
    """A curve row's scores: lds.evaluation's aggregate means of ``evaluated`` on the first
    ``max_items`` items of ``val_set`` (torch's RNG left as it was)."""
    from lds.evaluation import evaluate

    with torch.random.fork_rng():
        result = evaluate(evaluated, val_set, batch_size=eval_batch, max_images=max_items,
                          progress=False, shard=False)
    row = {k: v["mean"] for k, v in result.aggregates.items()}
    if "sim_by_iteration" in result.meta:   # Sim of the posterior means per decode
        row["sim_by_iteration"] = result.meta["sim_by_iteration"]["mean"]
    if "views" in result.meta:               # multi-view: the observed/query split scored
        row["eval_views"] = result.meta["views"]
    return row


def append_row(path: Path, row: dict, who: str, seed: int, printed: tuple[str, ...],
               items_per_step: dict[str, int] | None = None, stopped: str | None = None) -> None:
    """Append ``row`` to a curve file and print its ``printed`` numbers (and speeds)."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    shown = ", ".join(f"{k} {row[k]:.4f}" for k in printed if row.get(k) is not None)
    speed = "".join(f", {row[name]:.3f} {name.replace('_per_s', '')}/s"
                    for name in items_per_step or () if row.get(name))
    print(f"{who:6s} seed {seed} step {row['step']}: {shown}{speed}"
          + (f"  STOPPED ({stopped})" if stopped else ""), flush=True)


# Arguments that do not change what a run computes: where things are (a resumed run may be on
# another machine), how long it runs, what the command does instead of training.
NOT_SETTINGS = {"out", "resume", "steps", "threads", "public_src", "train", "val", "plot",
                "check", "speed", "score_saved", "pairs", "size", "ours_run"}


def run_settings(args) -> dict:
    """The command line's settings a resumed run must repeat."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in NOT_SETTINGS}


def state_path(out: Path, seed: int) -> Path:
    return out / f"state_seed{seed}.pt"


def save_state(trainees: dict[str, Trainee], step: int, seed: int, out: Path,
               settings: dict) -> None:
    """Every model's weights, optimiser state, clock and stop reason after ``step`` steps, with
    the run's settings, in one file written to a temporary name and then renamed over the last:
    a kill leaves either the old state or the new one, never a mixture."""
    path = state_path(out, seed)
    state = {"step": step, "settings": settings, "trainees": {
        who: {"model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
              "seconds": t.seconds, "stopped": t.stopped} for who, t in trainees.items()}}
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def resume_from(trainees: dict[str, Trainee], seed: int, out: Path, settings: dict) -> int:
    """Load OUT's state into the trainees and trim their curve files to the rows it covers;
    returns the step it was saved at. The settings must be those the run started with
    (``run_settings`` leaves out the number of steps, which a resumed run may extend)."""
    path = state_path(out, seed)
    if not path.is_file():
        raise UserError(f"--resume: no saved state {path} (a run saves one at every evaluation)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    changed = sorted(k for k in {*settings, *state["settings"]}
                     if settings.get(k) != state["settings"].get(k))
    if changed:
        raise UserError(f"--resume: {path} was saved with other settings: " + ", ".join(
            f"{k} {state['settings'].get(k)!r} (now {settings.get(k)!r})" for k in changed))
    if set(state["trainees"]) != set(trainees):
        raise UserError(f"--resume: {path} holds {sorted(state['trainees'])}, this run trains "
                        f"{sorted(trainees)}")
    step = int(state["step"])
    for who, trainee in trainees.items():
        saved = state["trainees"][who]
        trainee.model.load_state_dict(saved["model"])
        trainee.optimizer.load_state_dict(saved["optimizer"])
        trainee.seconds, trainee.stopped = saved["seconds"], saved["stopped"]
        rows = (trainee.path.read_text().splitlines() if trainee.path.is_file() else [])
        kept = [line for line in rows if line.strip() and json.loads(line)["step"] <= step]
        trainee.path.write_text("".join(line + "\n" for line in kept))
    print(f"resumed from {path} at step {step}", flush=True)
    return step


def train_alternating(trainees: dict[str, Trainee], batches_from, steps: int, eval_every: int,
                      val_set, max_items: int, eval_batch: int, seed: int, out: Path,
                      settings: dict | None = None, resume: bool = False) -> None:
    """Step every trainee on each batch of ``batches_from(start_step)`` (an iterable of tuples of
    a step's inputs, from ``start_step`` on), in an order that alternates from step to step so
    the machine's load hits all alike; each records a row at step 0, every ``eval_every`` steps
    and at the end, after which the state is saved (``settings``: what a resume must match);
    at the end each saves its final weights as OUT/<who>_seed<S>_step<N>.safetensors."""
    from safetensors.torch import save_file

    settings = settings or {}
    start = resume_from(trainees, seed, out, settings) if resume else 0
    if start == 0:                                 # a fresh run: new curve files from step 0
        for trainee in trainees.values():
            trainee.path.unlink(missing_ok=True)
            trainee.record(0, val_set, max_items, eval_batch, seed)
    for step, inputs in enumerate(batches_from(start), start=start):
        if step >= steps:
            break
        order = list(trainees.values())
        for trainee in (order if step % 2 == 0 else order[::-1]):
            trainee.step(step, seed, *inputs)
        done = step + 1
        if done % eval_every == 0 or done == steps:
            for trainee in trainees.values():
                trainee.record(done, val_set, max_items, eval_batch, seed)
            save_state(trainees, done, seed, out, settings)
    for trainee in trainees.values():
        weights = out / f"{trainee.who}_seed{seed}_step{steps}.safetensors"
        save_file({k: v.detach().contiguous() for k, v in trainee.model.state_dict().items()},
                  str(weights))
        print(f"wrote {trainee.path} and {weights}")
