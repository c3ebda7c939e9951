"""One typed config for every run: defaults here, recipes (fastvit/recipes/*.toml) override them,
explicit CLI flags override the recipe. The resolved config is saved in every run dir and checkpoint.
"""

import dataclasses
import math
import os
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path

from fastvit.errors import UserError

RECIPE_DIR = Path(__file__).parent / "recipes"
PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")  # auto: fastvit.choices.resolve_precision
SWITCHES = (True, False, "auto")  # --compile / --no-compile / unset (auto: fastvit.choices.resolve_compile)
DRLOC_MODES = ("l1", "ce", "cbr")
AUGMENTS = ("none", "basic", "gani22-finetune", "drloc21")
LOADERS = ("auto", "resident", "ffcv")
ATTENTION = ("auto", "triton", "xformers", "sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "math",
             "math_fp32")  # kernels
AUTOAUGMENT_POLICY = {"svhn": "svhn", "tiny-imagenet": "imagenet", "cinic10": "imagenet"}  # else cifar10
# Paper B's lambda per arch family (SPEC §2.6; the family is the arch's module in fastvit.models). It gives
# none for plain ViT/CaiT: we use T2T-ViT's 0.1, the closest arch it tuned (a single-scale ViT-style grid).
DRLOC_LAMBDA = {"swin": 0.5, "t2t": 0.1, "cvt": 0.1}
DRLOC_LAMBDA_DEFAULT = 0.1
# Paper A's multi-crop scales by dataset (SPEC §3): (global, local); CIFAR-like for every other dataset
MULTICROP_SCALES = {"tiny-imagenet": ((0.5, 1.0), (0.2, 0.4))}
MULTICROP_SCALES_DEFAULT = ((0.7, 1.0), (0.2, 0.5))
CLIP_MODES = ("global", "per-tensor")
WD_EXCLUDE = ("1d-and-tables", "1d", "none")
COSINE_FROM = ("warmup-end", "step-0")
# fastvit.augment's choices (kept here so that parsing flags imports no torch)
MIX_MODES = ("batch", "batch-flip", "pair")
ERASE_MODES = ("mean", "pixel", "constant")
ERASE_ASPECTS = ("log", "uniform")
NORM_STATS = ("dataset", "imagenet")
# config field -> fastvit.augment parameter, for the recipe numbers a config may set
AUGMENT_PARAMS = {"mixup_alpha": "mixup_alpha", "cutmix_alpha": "cutmix_alpha", "mix_prob": "mix_prob",
                  "mix_mode": "mix_mode", "erasing_prob": "erase_p", "erase_mode": "erase_mode",
                  "erase_aspect": "erase_aspect", "erase_tries": "erase_tries", "color_jitter": "color_jitter",
                  "policy": "policy"}


COMMANDS = ("train", "pretrain", "finetune")  # the commands that take Config flags
# Each field's metadata: help; group (its heading in --help; it decides which commands take the flag,
# unless `commands` says otherwise); choices, or names (a function giving them, e.g. the model
# registry); metavar; positive; flag=False for recorded values that are not flags.
GROUPS = {  # group -> (help heading, commands whose flags these are), in --help order
    "run": ("what to run", COMMANDS),
    "data": ("data", COMMANDS),
    "augment": ("supervised augmentation", ("train", "finetune")),
    "optim": ("optimisation (per-iteration schedules)", COMMANDS),
    "drloc": ("L_drloc auxiliary loss (Liu et al. 2021)", ("train", "finetune")),
    "ssl": ("self-supervised pretraining: DINO (Gani et al. 2022)", ("pretrain",)),
    "runtime": ("runtime", COMMANDS),
}


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


def _arch_names() -> list[str]:
    from fastvit import models  # on use: the registry imports torch

    return models.names()


def _dataset_names() -> tuple[str, ...]:
    from fastvit import loaders

    return loaders.DATASETS


def commands_of(f: dataclasses.Field) -> tuple[str, ...]:
    """The commands that take this field as a flag (none for recorded, non-flag fields)."""
    if not f.metadata.get("flag", True):
        return ()
    return f.metadata.get("commands") or GROUPS.get(f.metadata.get("group"), (None, COMMANDS))[1]


@dataclass
class Config:
    # ---- what to run
    arch: str = _f("vit", "model (fastvit.models registry)", names=_arch_names, group="run")
    dataset: str = _f("fashion-mnist", "dataset", names=_dataset_names, group="run")
    data_dir: str | None = _f(None, "folder with the dataset's standard files (default: its usual place)", group="run")
    cache_dir: str | None = _f(None, "where prepared .beton files live (env FASTVIT_DATA, ~/.cache/fastvit)",
                               group="run")
    out: str | None = _f(None, "run directory (default runs/<arch>-<dataset>-<time>)", metavar="DIR", group="run")
    init: str | None = _f(None, "pretrain checkpoint whose teacher backbone initialises the model (finetune)",
                          metavar="CKPT", group="run", commands=("finetune",))
    # ---- data
    img_size: int | None = _f(None, "model input size in px (default: the arch's: 32 paper A, 224 paper B)",
                              group="data")
    loader: str = _f("auto", "resident: the whole dataset on the device; ffcv: FFCV's Loader; auto: resident "
                     "if it fits", choices=LOADERS, group="data")
    subset: int | None = _f(None, "use only the first N training images", positive=True, group="data")
    repeats: int = _f(1, "repeated augmentation: each image this many times per epoch (paper A: 3)",
                      positive=True, group="data")
    augment: str = _f("basic", "train augmentation recipe", choices=AUGMENTS, group="augment")
    policy: str | None = _f(None, "AutoAugment policy: cifar10 | svhn | imagenet (default: by dataset)",
                            group="augment")
    label_smoothing: float = _f(0.1, "label smoothing of the supervised loss", group="augment")
    mixup_alpha: float | None = _f(None, "Mixup alpha (default: the augment recipe's)", group="augment")
    cutmix_alpha: float | None = _f(None, "CutMix alpha (default: the augment recipe's)", group="augment")
    mix_prob: float | None = _f(None, "probability that a sample is mixed (Mixup/CutMix; default: the recipe's)",
                                group="augment")
    erasing_prob: float | None = _f(None, "RandomErasing probability (default: the recipe's)", group="augment")
    erase_mode: str | None = _f(None, "RandomErasing fill: mean (0 after normalization, timm) | pixel (N(0,1) "
                                "noise) | constant (the dataset mean written into the normalized tensor: paper A's "
                                "code); default: the augment recipe's", choices=ERASE_MODES, group="augment")
    erase_aspect: str | None = _f(None, "RandomErasing box aspect: log (log-uniform, timm) | uniform (paper A's "
                                  "code); default: the augment recipe's", choices=ERASE_ASPECTS, group="augment")
    erase_tries: int | None = _f(None, "RandomErasing box draws per sample before giving up (timm 10, paper A "
                                 "100; default: the augment recipe's)", positive=True, group="augment")
    mix_mode: str | None = _f(None, "Mixup/CutMix: batch (one lambda and Mixup-or-CutMix draw per batch and a "
                              "random partner permutation: paper A's code) | batch-flip (the same draws, partner "
                              "B-1-i: timm's batch mode, paper B) | pair (per sample, partner B-1-i: fastvit's "
                              "earlier); default: the augment recipe's", choices=MIX_MODES, group="augment")
    color_jitter: float | None = _f(None, "ColorJitter brightness/contrast/saturation strength (default: the "
                                    "augment recipe's; drloc21 0: paper B's timm skips it under RandAugment)",
                                    group="augment")
    eval_crop_pct: float | None = _f(None, "test images resized to img-size / this (bicubic), then centre-cropped "
                                     "to img-size (paper B: 0.875, 256 -> 224; as its code, not at 32 px and "
                                     "below); default: resized or padded straight to img-size", positive=True,
                                     group="augment")
    norm_stats: str = _f("dataset", "normalize with the dataset's mean/std or ImageNet's (paper B's code, train and "
                         "test; 1-channel data keeps its own)", choices=NORM_STATS, group="data")
    # ---- optimisation (per-iteration schedules)
    epochs: int = _f(10, "training epochs", positive=True, group="optim")
    steps_per_epoch: int | None = _f(None, "cap each epoch at N steps, drawn from the whole shuffled dataset "
                                     "(a budgeted pass over a large unlabelled set)", positive=True, group="optim")
    batch_size: int = _f(128, "batch size per process (global = this x processes)", positive=True, group="optim")
    lr: float = _f(1e-3, "peak learning rate (AdamW)", positive=True, group="optim")
    lr_base_batch: int | None = _f(None, "if set, the lr used is lr x global batch / this (linear scaling)",
                                   positive=True, group="optim")
    schedule_epochs: int | None = _f(None, "length in epochs of the lr, weight-decay, teacher-momentum and L_drloc "
                                     "lambda schedules (default --epochs; paper B: 300, stopped at 100)",
                                     positive=True, group="optim")
    min_lr: float = _f(1e-6, "final learning rate of the cosine", group="optim")
    warmup_epochs: float = _f(1.0, "linear warm-up length in epochs", group="optim")
    warmup_lr: float = _f(1e-6, "learning rate at step 0 of the warm-up", group="optim")
    lr_scale_all: bool = _f(False, "--lr-base-batch scales --min-lr and --warmup-lr too (paper B), not only --lr",
                            group="optim")
    cosine_from: str = _f("warmup-end", "the lr cosine's progress counts from the warm-up's end (DINO, paper A) "
                          "or from step 0 (timm's CosineLRScheduler, paper B)", choices=COSINE_FROM, group="optim")
    weight_decay: float = _f(0.05, "AdamW weight decay (on the parameters --wd-exclude does not name)", group="optim")
    wd_exclude: str = _f("1d-and-tables", "no weight decay on: 1d-and-tables (biases, norms, pos-embed, cls-token, "
                         "rel-pos tables), 1d (biases and 1-D tensors: paper A's DINO), none (paper A fine-tuning)",
                         choices=WD_EXCLUDE, group="optim")
    weight_decay_end: float | None = _f(None, "cosine weight decay to this value (DINO: 0.4)", group="optim")
    beta1: float = _f(0.9, "AdamW beta1", group="optim")
    beta2: float = _f(0.999, "AdamW beta2", group="optim")
    grad_clip: float | None = _f(None, "clip the gradient norm to this value (see --clip-mode)", positive=True,
                                 group="optim")
    clip_mode: str = _f("global", "--grad-clip on the global norm, or on each parameter tensor's norm separately "
                        "(paper A's DINO)", choices=CLIP_MODES, group="optim")
    drop_path: float = _f(0.1, "stochastic depth rate", group="optim")
    drop_path_families: str | None = _f(None, "comma-separated arch families (swin, vit, cait, cvt, t2t, resnet) "
                                        "that get --drop-path, the others 0 (paper B: swin; default all)",
                                        group="optim")
    ema: float | None = _f(None, "keep an EMA of the weights with this decay (e.g. 0.9998); eval uses it",
                           group="optim")
    # ---- L_drloc (Liu et al. 2021)
    drloc: bool = _f(False, "add the dense relative localization loss", group="drloc")
    drloc_mode: str = _f("l1", "L_drloc head/loss", choices=DRLOC_MODES, group="drloc")
    drloc_lambda: float | None = _f(None, "L_drloc weight (default per arch family: swin 0.5, else 0.1)", group="drloc")
    drloc_pairs: int = _f(64, "token pairs sampled per image", positive=True, group="drloc")
    drloc_abs: bool = _f(True, "targets are |delta| (the paper's setting)", group="drloc")
    drloc_multiscale: bool = _f(False, "one L_drloc head per Swin stage", group="drloc")
    drloc_warmup_epochs: float = _f(20.0, "L_drloc lambda ramps up over this many epochs", group="drloc")
    # ---- self-supervised pretraining (Gani et al. 2022, DINO)
    dino_out_dim: int = _f(1024, "DINO projection output dim", positive=True, group="ssl")
    n_local: int = _f(8, "local crops per image", positive=True, group="ssl")
    local_size: int | None = _f(None, "local crop size in px (default: half the input; 96 at 224 px, as DINO)",
                                positive=True, group="ssl")
    global_scale: tuple[float, float] | None = _f(None, "RandomResizedCrop scale of the global views (default by "
                                                  "dataset: 0.7,1; tiny-imagenet 0.5,1)", group="ssl")
    local_scale: tuple[float, float] | None = _f(None, "RandomResizedCrop scale of the local views (default by "
                                                 "dataset: 0.2,0.5; tiny-imagenet 0.2,0.4)", group="ssl")
    teacher_momentum: float = _f(0.996, "EMA momentum of the teacher (cosine to 1)", group="ssl")
    teacher_temp: float = _f(0.07, "teacher temperature after warm-up", group="ssl")
    warmup_teacher_temp: float = _f(0.04, "teacher temperature at epoch 0", group="ssl")
    warmup_teacher_temp_epochs: int = _f(10, "teacher temperature warm-up epochs", group="ssl")
    freeze_last_layer: int = _f(1, "epochs during which the head's last layer gets no update", group="ssl")
    teacher_drop_path: bool = _f(False, "the teacher keeps stochastic depth on (paper A: built with --drop-path "
                                 "and never put in eval mode); off: the teacher runs without it", group="ssl")
    knn_every: int = _f(1, "pretrain: k-NN accuracy of the teacher backbone every N epochs (0: never)", group="ssl")
    knn_bank: int | None = _f(None, "k-NN monitor: the first N training images form the labelled bank "
                              "(default all)", positive=True, group="ssl")
    knn_test: int | None = _f(None, "k-NN monitor: score the first N test images (default all)", positive=True,
                              group="ssl")
    # ---- runtime
    seed: int = _f(0, "seed of every random choice (data order, augmentation, init, L_drloc pairs)", group="runtime")
    device: str = _f("auto", "cpu | cuda | cuda:N | auto", group="runtime")
    precision: str = _f("auto", "fp32 | tf32 (fp32 with TF32 matmuls, CUDA) | bf16 / fp16 autocast | auto: CUDA "
                        "bf16 (fp16 + loss scaling below sm80, TF32 for fp32 matmuls); CPU bf16 where a short "
                        "fwd+bwd measurement of this model says it is faster, else fp32 (cached)",
                        choices=PRECISIONS, group="runtime")
    attn: str = _f("auto", "attention backend (auto: the fastest measured per shape on this machine, cached)",
                   choices=ATTENTION, group="runtime")
    compile: bool | str = _f("auto", "torch.compile the model and loss (auto: on CUDA; on a CPU only where a "
                             "cached measurement says it is faster: see benchmarks/precision_step.py)",
                             choices=SWITCHES, switch=True, group="runtime")
    cuda_graphs: bool | str = _f("auto", "capture the step in CUDA graphs (compile mode reduce-overhead; CUDA "
                                 "only; auto: whenever compiled on CUDA)", choices=SWITCHES, switch=True,
                                 group="runtime")
    deterministic: bool = _f(False, "deterministic algorithms and fixed threads (bitwise reproducible)",
                             group="runtime")
    save_every: int | None = _f(None, "also checkpoint every N steps (default: every epoch)", positive=True,
                                group="runtime")
    resume: str | None = _f(None, "continue the run in this directory from its last.pt",
                            metavar="RUN_DIR", group="runtime")
    resume_new_schedule: bool = _f(False, "with --resume: accept a changed schedule (--epochs, --lr, --warmup-"
                                   "epochs, ...); its curves are recomputed at the checkpoint's step",
                                   group="runtime")
    log_every: int = _f(50, "steps between progress-bar/TensorBoard updates (each is a host sync)",
                        positive=True, group="runtime")
    eval_every: int = _f(1, "evaluate every N epochs", positive=True, group="runtime", commands=("train", "finetune"))
    num_workers: int = _f(2, "ffcv loader worker threads", positive=True, group="runtime")
    # ---- derived / recorded (not flags)
    command: str = _f("train", "train | pretrain | finetune", flag=False)
    recipe: str | None = _f(None, "recipe name", flag=False)

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir or os.environ.get("FASTVIT_DATA") or Path.home() / ".cache" / "fastvit")

    def scaled_lr(self, world_size: int) -> float:
        if self.lr_base_batch is None:
            return self.lr
        return self.lr * self.batch_size * world_size / self.lr_base_batch

    def drloc_weight(self) -> float:
        if self.drloc_lambda is not None:
            return self.drloc_lambda
        return DRLOC_LAMBDA.get(arch_family(self.arch), DRLOC_LAMBDA_DEFAULT)

    def schedule_length(self) -> int:
        """Epochs the schedules run over; training may stop earlier (paper B: 100 of 300)."""
        return self.schedule_epochs or self.epochs

    def arch_drop_path(self) -> float:
        """--drop-path, or 0 for an arch family --drop-path-families leaves out."""
        if self.drop_path_families is None:
            return self.drop_path
        families = {f.strip() for f in self.drop_path_families.split(",")}
        return self.drop_path if arch_family(self.arch) in families else 0.0

    def multicrop_scales(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """(global, local) RandomResizedCrop scales: the ones set, else the dataset's (paper A)."""
        global_scale, local_scale = MULTICROP_SCALES.get(self.dataset, MULTICROP_SCALES_DEFAULT)
        return tuple(self.global_scale or global_scale), tuple(self.local_scale or local_scale)

    def augment_overrides(self) -> dict:
        """Recipe numbers the user set explicitly, as keyword arguments of the augment builder."""
        out = {AUGMENT_PARAMS[k]: getattr(self, k) for k in AUGMENT_PARAMS if getattr(self, k) is not None}
        out["label_smoothing"] = self.label_smoothing
        if self.augment == "gani22-finetune" and self.policy is None:  # SPEC §4: the policy by dataset
            out["policy"] = AUTOAUGMENT_POLICY.get(self.dataset, "cifar10")
        return out

    def augment_recipe_defaults(self) -> dict:
        """The augment recipe's erasing, mixing and jitter values for the fields left unset (shown in the saved
        config)."""
        from fastvit.augment import RECIPES, AugmentParams  # torch, only when resolving

        recipe = AugmentParams(**RECIPES.get(self.augment, {}))
        names = ("erase_mode", "erase_aspect", "erase_tries", "mix_mode", "color_jitter")
        return {k: getattr(recipe, AUGMENT_PARAMS[k]) for k in names if getattr(self, k) is None}

    def resolved_eval_crop_pct(self) -> float | None:
        """--eval-crop-pct, or None on inputs of 32 px and below (paper B's code crops only larger ones)."""
        if self.eval_crop_pct is None:
            return None
        from fastvit.models import registry  # torch, only when a value depends on the arch

        size = self.img_size or registry.default_img_size(self.arch)
        return self.eval_crop_pct if size > 32 else None

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# On --resume: fields that only say how this process runs (free to change), and the schedule's fields
# (changed only with --resume-new-schedule: lr/wd curves are functions of step / total steps).
RESUME_MAY_CHANGE = ("device", "attn", "compile", "cuda_graphs", "num_workers", "log_every", "save_every",
                     "eval_every", "knn_every", "data_dir", "cache_dir", "resume", "resume_new_schedule")
SCHEDULE_FIELDS = ("epochs", "schedule_epochs", "steps_per_epoch", "lr", "lr_base_batch", "lr_scale_all", "min_lr",
                   "cosine_from", "warmup_epochs", "warmup_lr", "weight_decay", "weight_decay_end",
                   "drloc_warmup_epochs", "warmup_teacher_temp_epochs", "freeze_last_layer", "teacher_momentum")
RECORD_ONLY_KEYS = ("derived", "resolved")  # config.json entries computed at run time, not settings


def resume_conflicts(saved: dict, given: dict, new_schedule: bool) -> list[tuple[str, object, object]]:
    """(name, saved, given) for every setting in `given` that contradicts the resumed run's `saved`."""
    out = []
    for name, value in given.items():
        if name not in FIELDS or name not in saved or name in RESUME_MAY_CHANGE:
            continue
        if new_schedule and name in SCHEDULE_FIELDS:
            continue
        if name == "epochs" and stops_within_schedule(saved, given):
            continue  # more (or fewer) epochs of a schedule fixed by --schedule-epochs: the curves are unchanged
        before = tuple(saved[name]) if isinstance(saved[name], list) else saved[name]
        now = tuple(value) if isinstance(value, list) else value
        if before != now:
            out.append((name, before, now))
    return out


def stops_within_schedule(saved: dict, given: dict) -> bool:
    """The schedules' length is the saved --schedule-epochs and the given --epochs does not pass it."""
    fixed = saved.get("schedule_epochs")
    return (fixed is not None and given.get("schedule_epochs", fixed) == fixed
            and given.get("epochs", saved["epochs"]) <= fixed)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def derived(cfg: Config, train_images: int | None, world_size: int = 1, steps_per_epoch: int | None = None) -> dict:
    """Values the run computes from the config and the data (resolve() already filled the per-arch ones):
    lr after scaling, schedule lengths in steps (the loader's own count when given; None while the
    dataset's size is unknown)."""
    steps = steps_per_epoch
    if steps is None and train_images is not None:
        steps = train_images * cfg.repeats // (cfg.batch_size * world_size)  # drop_last, as the loader
        steps = min(steps, cfg.steps_per_epoch or steps)
    return {
        "lr": cfg.scaled_lr(world_size),
        "global_batch": cfg.batch_size * world_size,
        "train_images": train_images,
        "steps_per_epoch": steps,
        "total_steps": None if steps is None else cfg.epochs * steps,
        "schedule_steps": None if steps is None else cfg.schedule_length() * steps,
        "warmup_steps": None if steps is None else round(cfg.warmup_epochs * steps),
    }


def arch_family(arch: str) -> str | None:
    """The arch's family (the fastvit.models module defining it: swin, vit, cait, cvt, t2t, resnet); None if unknown."""
    from fastvit.models import registry  # torch, only when a value depends on the arch

    return registry.family(arch)


def resolve(cfg: Config) -> Config:
    """Fill the values that depend on the arch or dataset (lambda, drop path, multi-crop scales, eval crop) or on the
    augment recipe (erasing, jitter), so the saved and printed config holds the numbers the run uses. Idempotent: a
    resolved config resolves to itself."""
    global_scale, local_scale = cfg.multicrop_scales()
    return dataclasses.replace(cfg, drloc_lambda=cfg.drloc_weight(), drop_path=cfg.arch_drop_path(),
                               global_scale=global_scale, local_scale=local_scale,
                               eval_crop_pct=cfg.resolved_eval_crop_pct(), **cfg.augment_recipe_defaults())


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def load_recipe(name: str) -> dict:
    """A shipped recipe by name, or a user's recipe file (a path ending in .toml)."""
    path = Path(name) if name.endswith(".toml") else RECIPE_DIR / f"{name}.toml"
    if not path.is_file():
        if name.endswith(".toml"):
            raise UserError(f"recipe file {path} does not exist")
        raise UserError(f"unknown recipe {name!r}; choose from {', '.join(recipe_names())}")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"recipe {path} is not valid TOML: {e}") from None
    except OSError as e:
        raise UserError(f"recipe {path}: cannot read it ({e.strerror})") from None
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise UserError(f"recipe {path} sets unknown fields {unknown}")
    for key, value in data.items():
        problem = type_problem(key, value)
        if problem:
            raise UserError(f"recipe {path}: {key} {problem}")
    return data


def type_problem(name: str, value) -> str | None:
    """Why `value` cannot be field `name` ('must be a number, got 'x''), or None if it can."""
    annotation = FIELDS[name].type
    options = annotation.__args__ if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None:
        return None if type(None) in options else "must be set, got null"
    problems = [kind_problem(kind, value) for kind in options if kind is not type(None)]
    return None if None in problems else problems[0]


def kind_problem(kind, value) -> str | None:
    """Why `value` is not of the one annotated type `kind`, or None if it is (or no check exists for it)."""
    if getattr(kind, "__origin__", None) is tuple:
        n = len(kind.__args__)
        if not isinstance(value, list | tuple) or len(value) != n or not all(is_number(v) for v in value):
            return f"must be {n} numbers (e.g. 0.2,0.5), got {value!r}"
        return None
    checks = {bool: (lambda v: isinstance(v, bool), "true or false"), int: (lambda v: type(v) is int, "an integer"),
              float: (is_number, "a number"), str: (lambda v: isinstance(v, str), "a string")}
    if kind not in checks:  # a field type without a check here: the field's own validation covers it
        return None
    ok, wanted = checks[kind]
    return None if ok(value) else f"must be {wanted}, got {value!r}"


def is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def build(overrides: dict, *, recipe: str | None = None, command: str = "train") -> Config:
    """defaults <- recipe <- overrides (explicit flags), then validated."""
    values = load_recipe(recipe) if recipe else {}
    values.update({k: v for k, v in overrides.items() if v is not None or k in values})
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    cfg = Config(**values, command=command, recipe=recipe)
    validate(cfg)
    return resolve(cfg)


def validate(cfg: Config) -> None:
    """Every value checked before anything is built or written; a bad one is a one-line UserError."""
    for name, f in FIELDS.items():
        value = getattr(cfg, name)
        problem = type_problem(name, value)
        if problem:
            raise UserError(f"{flag(name)} {problem}")
        numbers = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise UserError(f"{flag(name)} must be a finite number, got {value}")
        if f.metadata.get("positive") and value is not None and not value > 0:
            raise UserError(f"{flag(name)} must be positive, got {value}")
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:  # None: resolved later
            raise UserError(f"{flag(name)} {value!r} is not one of {', '.join(map(str, choices))}")
    for name in ("lr", "min_lr", "warmup_lr", "weight_decay", "weight_decay_end", "drop_path", "label_smoothing",
                 "warmup_epochs", "mixup_alpha", "cutmix_alpha", "drloc_lambda", "drloc_warmup_epochs",
                 "warmup_teacher_temp_epochs", "freeze_last_layer", "seed", "knn_every"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 0:
            raise UserError(f"{flag(name)} must be >= 0, got {getattr(cfg, name)}")
    for name in ("beta1", "beta2", "label_smoothing", "drop_path"):
        if not 0 <= getattr(cfg, name) < 1:
            raise UserError(f"{flag(name)} must be in [0, 1), got {getattr(cfg, name)}")
    for name in ("mix_prob", "erasing_prob", "teacher_momentum"):
        if getattr(cfg, name) is not None and not 0 <= getattr(cfg, name) <= 1:
            raise UserError(f"{flag(name)} must be in [0, 1], got {getattr(cfg, name)}")
    for name in ("teacher_temp", "warmup_teacher_temp"):
        if not getattr(cfg, name) > 0:
            raise UserError(f"{flag(name)} must be positive, got {getattr(cfg, name)}")
    for name in ("global_scale", "local_scale"):
        if getattr(cfg, name) is None:  # by dataset (multicrop_scales)
            continue
        low, high = getattr(cfg, name)
        if not 0 < low <= high <= 1:
            raise UserError(f"{flag(name)} must be two numbers LOW,HIGH with 0 < LOW <= HIGH <= 1, "
                            f"got {','.join(map(str, getattr(cfg, name)))}")
    if cfg.img_size is not None and cfg.img_size <= 0:
        raise UserError(f"--img-size must be positive, got {cfg.img_size}")
    if cfg.eval_crop_pct is not None and not 0 < cfg.eval_crop_pct <= 1:
        raise UserError(f"--eval-crop-pct must be in (0, 1], got {cfg.eval_crop_pct}")
    if cfg.ema is not None and not 0 < cfg.ema < 1:
        raise UserError(f"--ema must be in (0, 1), got {cfg.ema}")
