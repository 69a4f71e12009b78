"""An experiment spec: which runs a study trains and evaluates, as one YAML file.

    name: monet-clevr-mv-32
    stores:                       # name -> store paths (relative paths: to the spec file)
      clevr-mv-32: {train: data/train.zarr, eval: data/test.zarr, val: data/val.zarr}
    models:                       # name -> overrides applied to every run of that model
      monet: [model.height=32, model.width=32, model.num_slots=5]
    seeds: [0, 1, 2]
    train:
      steps: 1500
      overrides: [optim.batch_size=16, threads=1]
    lds: {weight: 0.5, sigma: 0.1}     # the experimental group (control: LDS off)
    eval: {max_images: 400, batch_size: 32, metrics: []}
                                  # MulMON: observed_views: [1, 3, 5] also evaluates each main
                                  # run observing that many views (query views: the rest)
    gap: {enabled: true, samples: 200, max_images: 48, chunk: 50}
    figures: {num_examples: 6}
    ablations:
      sigma: [0.05, 0.2]          # extra LDS runs (first seed) with these sigmas
      test_k: [3, 7]              # every main run also evaluated at these K
      train_k: [3, 7]             # extra control + LDS runs (first seed) trained at these K
      lds_latents: [mean]         # extra LDS runs (every seed) with the prior on these latents

The spec expands to a fixed, ordered list of :class:`RunSpec` (``expand_runs``); ``--slice i/n``
takes runs i, i+n, i+2n ... so several machines can share one study directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


from common.config import apply_overrides, merge_mapping, from_dict, read_yaml_mapping, to_dict
from common.errors import ConfigError, UserError


class SpecError(UserError):
    """An experiment spec that cannot be read or does not make sense."""


@dataclass
class StorePaths:
    train: str = ""
    eval: str = ""                       # default: the training store
    # held-out scenes for the curves during training (validate.*); never the eval (test) store
    val: str = ""


@dataclass
class TrainSection:
    steps: int = 1000
    overrides: list[str] = field(default_factory=list)
    # Start every run from another study's weights (a curriculum: e.g. single views first, then
    # query views): a path template formatted per run with {run_id}, {model}, {store}, {group}
    # and {seed}, so each arm and seed continues its own earlier run. "" = a fresh initialisation.
    init_from: str = ""

    def init_path(self, run: "RunSpec") -> str:
        """This run's ``init_from`` (the template filled in), or "" without one."""
        if not self.init_from:
            return ""
        return self.init_from.format(run_id=run.run_id, model=run.model, store=run.store,
                                     group=run.group, seed=run.seed)


@dataclass
class LDSSection:
    weight: float = 0.5
    sigma: float = 0.1
    latents: str = "sample"              # lds.latents of the main LDS runs (docs/training.md)
    from_iteration: int = 0              # lds.from_iteration of every LDS run (0: Eq. 3, all)


@dataclass
class EvalSection:
    max_images: int | None = None
    batch_size: int = 32
    metrics: list[str] = field(default_factory=list)       # MetricsConfig overrides key=value
    # Multi-view models: each main run is also evaluated observing this many views of each
    # scene (eval/eval_obs<N>.json), for novel-view quality against the views seen.
    observed_views: list[int] = field(default_factory=list)


@dataclass
class GapSection:
    enabled: bool = False
    samples: int = 500
    max_images: int | None = 64
    chunk: int = 50                      # samples per decoder pass
    batch_size: int = 8                  # images per pass
    amp: str = "off"                     # bf16: decoder passes under bf16 autocast (gap.py)


@dataclass
class FigureSection:
    num_examples: int = 6


@dataclass
class AblationSection:
    sigma: list[float] = field(default_factory=list)
    test_k: list[int] = field(default_factory=list)
    train_k: list[int] = field(default_factory=list)
    # Every seed, not the first only: whether LDS helps is a question of the seed spread.
    lds_latents: list[str] = field(default_factory=list)


@dataclass
class ExperimentSpec:
    name: str = "experiment"
    stores: dict[str, StorePaths] = field(default_factory=dict)
    models: dict[str, list[str]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    train: TrainSection = field(default_factory=TrainSection)
    lds: LDSSection = field(default_factory=LDSSection)
    eval: EvalSection = field(default_factory=EvalSection)
    gap: GapSection = field(default_factory=GapSection)
    figures: FigureSection = field(default_factory=FigureSection)
    ablations: AblationSection = field(default_factory=AblationSection)
    device: str = "cpu"


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study and where it lives under the study directory."""

    model: str
    store: str
    seed: int
    lds: bool
    sigma: float | None = None           # set only for the sigma ablation
    num_slots: int | None = None         # set only for the train-K ablation
    latents: str | None = None           # set only for the lds_latents ablation

    @property
    def group(self) -> str:
        """control | lds, with the ablation's setting: lds-sigma0.2, control-K7."""
        name = "lds" if self.lds else "control"
        if self.sigma is not None:
            name += f"-sigma{self.sigma:g}"
        if self.num_slots is not None:
            name += f"-K{self.num_slots}"
        if self.latents is not None:
            name += f"-{self.latents}"
        return name

    @property
    def run_id(self) -> str:
        return f"{self.model}__{self.store}__{self.group}__seed{self.seed}"

    @property
    def is_main(self) -> bool:
        """A run of the control-vs-LDS comparison (not an ablation)."""
        return self.sigma is None and self.num_slots is None and self.latents is None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> ExperimentSpec:
    """Read and validate a spec; store paths become absolute (relative ones: to the spec file)."""
    path = Path(path)
    loaded = read_yaml_mapping(path, "experiment spec", SpecError)
    try:
        # stores/models are open-ended mappings: taken whole, the rest merged over the defaults.
        data = to_dict(ExperimentSpec())
        for key in ("stores", "models"):
            if key in loaded:
                data[key] = loaded.pop(key)
        merge_mapping(data, loaded)
        apply_overrides(data, overrides or [])
        spec = from_dict(ExperimentSpec, data)
    except ConfigError as exc:
        raise SpecError(f"{path}: {exc}") from None
    stores = {}
    for name, value in spec.stores.items():
        paths = value if isinstance(value, StorePaths) else _store_paths(name, value)
        if not paths.train:
            raise SpecError(f"{path}: store {name!r} needs a train path")
        train = _resolve(paths.train, path.parent)
        stores[name] = StorePaths(train=train, eval=_resolve(paths.eval, path.parent) if paths.eval else train,
                                  val=_resolve(paths.val, path.parent) if paths.val else "")
    spec.stores = stores
    if spec.train.init_from:
        spec.train.init_from = _resolve(spec.train.init_from, path.parent)
    validate_spec(spec, str(path))
    return spec


def _store_paths(name: str, value) -> StorePaths:
    if isinstance(value, str):
        return StorePaths(train=value)
    if isinstance(value, dict) and set(value) <= {"train", "eval", "val"}:
        return StorePaths(train=str(value.get("train", "")), eval=str(value.get("eval", "") or ""),
                          val=str(value.get("val", "") or ""))
    raise SpecError(f"store {name!r} must be a path or {{train: PATH, eval: PATH, val: PATH}}, "
                    f"got {value!r}")


def _resolve(store: str, base: Path) -> str:
    p = Path(store).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def validate_spec(spec: ExperimentSpec, where: str = "spec") -> None:
    from lds.models import MODEL_CONFIGS

    if not spec.stores:
        raise SpecError(f"{where}: no stores")
    if not spec.models:
        raise SpecError(f"{where}: no models")
    for name, overrides in spec.models.items():
        if name not in MODEL_CONFIGS:
            raise SpecError(f"{where}: unknown model {name!r}; known: {', '.join(sorted(MODEL_CONFIGS))}")
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise SpecError(f"{where}: models.{name} must be a list of key=value overrides")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
        raise SpecError(f"{where}: seeds must be a non-empty list of distinct integers")
    if spec.train.steps < 1:
        raise SpecError(f"{where}: train.steps must be at least 1")
    try:
        spec.train.init_path(RunSpec(model="m", store="s", seed=0, lds=False))
    except (KeyError, IndexError, ValueError) as exc:
        raise SpecError(f"{where}: train.init_from {spec.train.init_from!r} is not a template of "
                        f"{{run_id}}, {{model}}, {{store}}, {{group}} and {{seed}} ({exc!r})") from None
    if spec.gap.samples < 1 or spec.gap.chunk < 1:
        raise SpecError(f"{where}: gap.samples and gap.chunk must be at least 1")
    if spec.gap.amp not in ("off", "bf16"):
        raise SpecError(f"{where}: gap.amp must be off or bf16, got {spec.gap.amp!r}")
    if any(s <= 0 for s in spec.ablations.sigma):
        raise SpecError(f"{where}: ablations.sigma values must be positive")
    if any(n < 1 for n in spec.eval.observed_views):
        raise SpecError(f"{where}: eval.observed_views values must be at least 1")
    if any(k < 2 for k in spec.ablations.test_k + spec.ablations.train_k):
        raise SpecError(f"{where}: ablation K values must be at least 2")
    from lds.training.config import LDS_LATENTS, LDSConfig

    for latents in [spec.lds.latents] + list(spec.ablations.lds_latents):
        if latents not in LDS_LATENTS:
            raise SpecError(f"{where}: LDS latents must be one of {', '.join(LDS_LATENTS)}, "
                            f"got {latents!r}")
    # The LDS section's other values obey the training config's rules; ask it rather than
    # restate them, so a bad value is refused when the spec is read, before any run trains.
    try:
        LDSConfig(enabled=True, weight=spec.lds.weight, sigma=spec.lds.sigma,
                  latents=spec.lds.latents, from_iteration=spec.lds.from_iteration)
    except ConfigError as exc:
        raise SpecError(f"{where}: {exc}") from None


def expand_runs(spec: ExperimentSpec) -> list[RunSpec]:
    """Every run of the study, in a fixed order: main runs (model, store, seed, control then LDS),
    then the sigma ablation, then the train-K ablation (first seed only), then the LDS-latents
    ablation (every seed)."""
    runs: list[RunSpec] = []
    for model in spec.models:
        for store in spec.stores:
            for seed in spec.seeds:
                runs.append(RunSpec(model, store, seed, lds=False))
                runs.append(RunSpec(model, store, seed, lds=True))
    first = spec.seeds[0]
    for model in spec.models:
        for store in spec.stores:
            for sigma in spec.ablations.sigma:
                if sigma != spec.lds.sigma:
                    runs.append(RunSpec(model, store, first, lds=True, sigma=float(sigma)))
            for k in spec.ablations.train_k:
                runs.append(RunSpec(model, store, first, lds=False, num_slots=int(k)))
                runs.append(RunSpec(model, store, first, lds=True, num_slots=int(k)))
            for latents in spec.ablations.lds_latents:
                if latents != spec.lds.latents:
                    runs.extend(RunSpec(model, store, seed, lds=True, latents=latents)
                                for seed in spec.seeds)
    return runs


def parse_slice(text: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise SpecError(f"--slice must look like i/n (e.g. 0/2), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise SpecError(f"--slice {text}: need 0 <= i < n")
    return i, n


def select_slice(runs: list[RunSpec], index: int, count: int) -> list[RunSpec]:
    return [run for j, run in enumerate(runs) if j % count == index]
