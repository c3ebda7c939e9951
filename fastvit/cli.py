"""`fastvit train | pretrain | finetune | eval | data | plot | attention-map`.

Errors a user can cause end in one line on stderr and exit code 2; nothing half-written.
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import fastvit
from fastvit import config
from fastvit.errors import UserError

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the problem and the valid choices), exit 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _number_pair(text: str) -> tuple[float, float]:
    """LO,HI as a flag takes it, e.g. --local-scale 0.2,0.5."""
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers LO,HI, got {text!r}") from None
    return lo, hi


def _flag_type(f: dataclasses.Field):
    kind = f.type if isinstance(f.type, type) or getattr(f.type, "__origin__", None) else next(
        a for a in f.type.__args__ if a is not type(None))  # "X | None" -> X
    if getattr(kind, "__origin__", None) is tuple:
        return _number_pair
    return kind


def _help(f: dataclasses.Field) -> str:
    """The field's help with its default, once: unless the text already says what the default is."""
    text = f.metadata["help"]
    if "default" not in text and f.default is not None:
        if isinstance(f.default, bool):
            shown = "on" if f.default else "off"
        elif isinstance(f.default, tuple):
            shown = ",".join(str(v) for v in f.default)  # as the flag takes it
        else:
            shown = str(f.default)
        text += f" (default: {shown})"
    return text.replace("%", "%%")  # argparse %-formats help strings


def _metavar(f: dataclasses.Field) -> str:
    if "metavar" in f.metadata:
        return f.metadata["metavar"]
    kind = _flag_type(f)
    if kind is _number_pair:
        return "LO,HI"
    return {int: "N", float: "X"}.get(kind, f.name.split("_")[-1].upper())


def _choices(f: dataclasses.Field):
    names = f.metadata.get("names")
    return list(names()) if names else f.metadata.get("choices")


def add_config_flags(p: argparse.ArgumentParser, command: str) -> None:
    """The Config fields that apply to `command`, as flags under their group's heading. Unset flags
    stay None so a recipe's value is not overridden; fields of other commands are None too."""
    headings = {name: p.add_argument_group(title) for name, (title, _) in config.GROUPS.items()}
    other = None
    for f in dataclasses.fields(config.Config):
        if not f.metadata.get("flag", True):
            continue
        if command not in config.commands_of(f):
            p.set_defaults(**{f.name: None})
            continue
        group = headings.get(f.metadata.get("group"))
        if group is None:  # a field without a known group still gets its flag
            other = other or p.add_argument_group("other")
            group = other
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool or f.metadata.get("switch"):  # switch: --x / --no-x / unset (its default, e.g. auto)
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=_help(f))
        else:
            choices = _choices(f)
            group.add_argument(flag, dest=f.name, type=_flag_type(f), default=None, help=_help(f),
                               metavar=None if choices else _metavar(f), choices=choices)
    run = headings["run"]
    run.add_argument("--recipe", metavar="NAME",  # not argparse choices: recipes are checked when loaded
                     help=f"start from a recipe: {', '.join(config.recipe_names())}; explicit flags override it")
    run.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fastvit", description="Fast training of Vision Transformers on small datasets.")
    p.add_argument("--version", action="version", version=f"fastvit {fastvit.__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")

    for name, desc in [
        ("train", "supervised training, optionally with L_drloc (--drloc)"),
        ("pretrain", "DINO self-distillation on the dataset itself (paper A); no labels used"),
        ("finetune", "supervised training from a pretrain checkpoint's teacher backbone (--init)"),
    ]:
        command = sub.add_parser(name, help=desc, description=desc, usage=f"fastvit {name} [options]",
                                 epilog=FLAG_DEFAULTS, formatter_class=_wide_help)
        add_config_flags(command, name)

    from fastvit import loaders

    e = sub.add_parser("eval", help="top-1/top-5 of a checkpoint on a dataset's test split")
    e.add_argument("--ckpt", required=True, help="checkpoint (last.pt / best.pt)")
    e.add_argument("--dataset", choices=loaders.DATASETS, metavar="NAME",
                   help=f"one of {', '.join(loaders.DATASETS)} (default: the one it was trained on)")
    e.add_argument("--data-dir", metavar="DIR",
                   help="its standard files or prepared .beton files (default: the training run's)")
    e.add_argument("--cache-dir", metavar="DIR", help="where prepared .beton files live (default: the training run's)")
    e.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default: auto)")
    e.add_argument("--batch-size", type=int, default=256, metavar="N", help="images per batch (default: 256)")
    e.add_argument("--precision", default="auto", choices=config.PRECISIONS,
                   help="autocast precision (default auto: the one the checkpoint's run resolved to)")
    e.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    e.add_argument("--knn", action="store_true", help="k-NN accuracy (k 20, T 0.07) of the backbone's pooled "
                   "features instead: any fastvit checkpoint (pretrain: its teacher) or paper A's train_ssl.py one")
    e.add_argument("--knn-bank", type=int, help="with --knn: the first N training images form the bank (default all)")
    e.add_argument("--knn-test", type=int, help="with --knn: score the first N test images (default all)")

    data = sub.add_parser("data", help="prepare datasets as FFCV .beton files; inspect them")
    dsub = data.add_subparsers(dest="data_command", required=True, parser_class=Parser, metavar="COMMAND")
    prep = dsub.add_parser("prepare", help="read a dataset's standard files, write DATASET-{train,test}.beton")
    prep.add_argument("dataset", choices=loaders.DATASETS, metavar="DATASET", help=", ".join(loaders.DATASETS))
    prep.add_argument("--src", type=Path, metavar="DIR",
                      help="folder (or archive) with the dataset's standard files")
    prep.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    prep.add_argument("--download", action="store_true", help="fetch from the official URLs first")
    prep.add_argument("--jpeg-quality", type=int, default=90, metavar="Q",
                      help="for datasets stored as JPEG (> 64 px) (default: 90)")
    prep.add_argument("--short-side", type=int, default=256, metavar="PX",
                      help="JPEG-stored images: shorter side scaled to this (default: 256)")
    prep.add_argument("--workers", type=int, metavar="N", help="writer processes (default: all cores)")
    prep.add_argument("--checksum", action="append", default=[], metavar="FILE=HEX",
                      help="expected md5/sha256 of a downloaded file (repeatable)")
    info = dsub.add_parser("info", help="print what a .beton file holds")
    info.add_argument("file", type=Path)

    pl = sub.add_parser("plot", help="PNG curves of loss, accuracy and lr from RUN_DIR/metrics.jsonl")
    pl.add_argument("run_dir", type=Path)
    pl.add_argument("--out", type=Path, help="PNG path (default: RUN_DIR/curves.png)")

    am = sub.add_parser("attention-map", help="PNG of the last-layer attention of each head over an image")
    am.add_argument("--ckpt", required=True)
    am.add_argument("--image", required=True, type=Path)
    am.add_argument("--out", type=Path, help="PNG path (default: IMAGE stem + _attention.png)")
    am.add_argument("--ema", action="store_true", help="use the EMA weights")
    return p


def _wide_help(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, max_help_position=34)


FLAG_DEFAULTS = "A flag left out takes the recipe's value (--recipe), else the default shown."


def config_from_args(args) -> config.Config:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(config.Config)
                 if f.metadata.get("flag", True) and getattr(args, f.name) is not None}
    if args.command == "finetune" and not overrides.get("init"):
        raise UserError("fastvit finetune needs --init CKPT (a `fastvit pretrain` checkpoint)")
    if overrides.get("resume"):
        return resumed_config(overrides, args)
    return config.build(overrides, recipe=args.recipe, command=args.command)


def resumed_config(overrides: dict, args) -> config.Config:
    """The run's own config with the explicitly given flags on top, refusing any that contradict it."""
    run_dir = Path(overrides["resume"])
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        raise UserError(f"--resume {run_dir}: no config.json there (not a fastvit run dir)")
    try:
        values = json.loads(saved_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--resume {run_dir}: config.json is unreadable ({e})") from None
    if not isinstance(values, dict) or not {"command", "recipe"} <= set(values):
        raise UserError(f"--resume {run_dir}: config.json is not a fastvit config")
    for key in config.RECORD_ONLY_KEYS:
        values.pop(key, None)
    unknown = sorted(set(values) - set(config.FIELDS))
    if unknown:
        raise UserError(f"--resume {run_dir}: config.json has unknown fields {unknown}")
    out = overrides.pop("out", None)
    if out is not None and Path(out).resolve() != run_dir.resolve():
        # honouring it would mean copying the run; continuing it in place and writing elsewhere is ambiguous
        raise UserError(f"--resume continues {run_dir} in place; --out {out} is another folder (to branch the "
                        f"run, copy it first: cp -r {run_dir} {out}, then --resume {out})")
    command, recipe = values.pop("command"), values.pop("recipe")
    if args.command != command or (args.recipe is not None and args.recipe != recipe):
        raise UserError(f"--resume {run_dir}: that run is `fastvit {command}`"
                        f"{f' --recipe {recipe}' if recipe else ''}; resume it with the same command and recipe")
    conflicts = config.resume_conflicts(values, overrides, new_schedule=bool(overrides.get("resume_new_schedule")))
    if conflicts:
        schedule = any(name in config.SCHEDULE_FIELDS for name, _, _ in conflicts)
        hint = " (a new schedule needs --resume-new-schedule)" if schedule else ""
        listed = "; ".join(f"{config.flag(name)} {'unset' if before is None else before} -> {now}"
                           for name, before, now in conflicts)
        raise UserError(f"--resume {run_dir}: flags contradict the run ({listed}){hint}")
    values.update(overrides)
    return dataclasses.replace(config.build(values, command=command), recipe=recipe)


def prepared_train_images(cfg: config.Config) -> int | None:
    """The train split's size if it is already prepared (--print-config prepares nothing)."""
    from fastvit import loaders
    from fastvit.loaders.prepare import beton_paths

    for folder in (cfg.data_dir, cfg.resolved_cache_dir()):
        train = beton_paths(cfg.dataset, Path(folder))[0] if folder else None
        if train is not None and train.is_file():
            try:
                count = loaders.read_meta(train)["count"]
            except (UserError, KeyError):
                continue
            return min(count, cfg.subset or count)
    return None


def check_names(cfg: config.Config) -> None:
    """Unknown arch / dataset: say so before any data is touched or anything is written."""
    from fastvit import loaders, models

    if cfg.arch not in models.names():
        raise UserError(f"unknown arch {cfg.arch!r}; choose from {', '.join(models.names())}")
    if cfg.dataset not in loaders.DATASETS:
        raise UserError(f"unknown dataset {cfg.dataset!r}; choose from {', '.join(loaders.DATASETS)}")
    if cfg.data_dir and not Path(cfg.data_dir).is_dir():
        raise UserError(f"--data-dir {cfg.data_dir} is not a directory")


def cmd_train(args) -> int:
    cfg = config_from_args(args)
    if args.print_config:
        print(json.dumps({**cfg.to_dict(), "derived": config.derived(cfg, prepared_train_images(cfg))}, indent=2))
        return 0
    check_names(cfg)
    from fastvit import train

    try:
        train.run(cfg)
    except train.TrainingError as e:
        print(f"fastvit: {e}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_eval(args) -> int:
    from fastvit import evaluate

    if args.knn:
        print(json.dumps(evaluate.knn_checkpoint(
            args.ckpt, dataset=args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir, device=args.device,
            batch_size=args.batch_size, precision=args.precision, bank=args.knn_bank, test=args.knn_test)))
        return 0
    result = evaluate.evaluate_checkpoint(args.ckpt, dataset=args.dataset, data_dir=args.data_dir,
                                          cache_dir=args.cache_dir, device=args.device,
                                          batch_size=args.batch_size, precision=args.precision, ema=args.ema)
    print(json.dumps(result))
    return 0


def cmd_data(args) -> int:
    from fastvit import loaders

    if args.data_command == "info":
        print(loaders.info(args.file))
        return 0
    if args.src is None and not args.download:
        raise UserError("give --src DIR (the dataset's standard files) or --download")
    if not 1 <= args.jpeg_quality <= 100:
        raise UserError(f"--jpeg-quality must be in 1..100, got {args.jpeg_quality}")
    if args.short_side <= 0 or (args.workers is not None and args.workers <= 0):
        raise UserError("--short-side and --workers must be positive")
    bad = [c for c in args.checksum if "=" not in c]
    if bad:
        raise UserError(f"--checksum takes FILE=HEX, got {bad[0]!r}")
    checksums = dict(c.split("=", 1) for c in args.checksum) or None
    for path in loaders.prepare(args.dataset, args.src, args.out, download=args.download,
                                jpeg_quality=args.jpeg_quality, short_side=args.short_side,
                                num_workers=args.workers, checksums=checksums):
        print(path)
    return 0


def cmd_plot(args) -> int:
    from fastvit import plots

    print(plots.plot_run(args.run_dir, args.out))
    return 0


def cmd_attention_map(args) -> int:
    from fastvit import plots

    print(plots.attention_map(args.ckpt, args.image, args.out, ema=args.ema))
    return 0


COMMANDS = {"train": cmd_train, "pretrain": cmd_train, "finetune": cmd_train, "eval": cmd_eval,
            "data": cmd_data, "plot": cmd_plot, "attention-map": cmd_attention_map}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
    except UserError as e:
        print(f"fastvit {args.command}: error: {e}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        print("fastvit: interrupted; the last checkpoint (if any) is intact: continue with --resume RUN_DIR",
              file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code)

