"""The CLI's contract for bad input: one line on stderr naming the problem, exit 2, no traceback,
nothing written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_runner import fastvit


def assert_one_line_error(result, *needles, max_lines=1):
    """Exit 2 and the error on one line (the last; `max_lines` 2 allows a progress bar above it)."""
    assert result.returncode == 2, result.stderr
    lines = [ln.rsplit("\r", 1)[-1] for ln in result.stderr.strip().split("\n")]  # as a terminal shows it
    assert 1 <= len(lines) <= max_lines, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


@pytest.fixture
def base(fmnist_dir, cache_dir, tmp_path):
    return ["--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--cache-dir", str(cache_dir),
            "--epochs", "1", "--batch-size", "64", "--out", str(tmp_path / "run")]


def test_unknown_arch_lists_the_choices(base, tmp_path):
    r = fastvit("train", "--arch", "vit_huge_nope", *base)
    assert_one_line_error(r, "--arch", "'vit_huge_nope'", "vit_tiny", "swin")
    assert not (tmp_path / "run").exists()


def test_unknown_dataset_lists_the_choices(tmp_path):
    r = fastvit("train", "--arch", "vit_tiny", "--dataset", "mnist-nope", "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "--dataset", "'mnist-nope'", "cifar10", "fashion-mnist")
    assert not (tmp_path / "run").exists()


def test_missing_data_dir(tmp_path):
    r = fastvit("train", "--arch", "vit_tiny", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"))
    assert_one_line_error(r, "--data-dir", "not a directory")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag,value", [("--epochs", "0"), ("--batch-size", "-4"), ("--lr", "0"),
                                        ("--drloc-pairs", "0"), ("--subset", "-1")])
def test_non_positive_numbers(flag, value, tmp_path):
    r = fastvit("train", "--arch", "vit_tiny", flag, value, "--out", str(tmp_path / "r"))
    assert_one_line_error(r, flag, "must be positive")
    assert not (tmp_path / "r").exists()


def test_bad_choice_is_one_line(tmp_path):
    r = fastvit("train", "--precision", "fp8")
    assert_one_line_error(r, "--precision", "fp32", "bf16")


def test_image_size_the_arch_cannot_take(base, tmp_path):
    r = fastvit("train", "--arch", "swin", "--img-size", "30", *base)
    assert_one_line_error(r, "30")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; the permission check needs a user")
def test_unwritable_output_dir(base, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    args = [a if a != str(tmp_path / "run") else str(locked / "run") for a in base]
    r = fastvit("train", "--arch", "vit_tiny", *args)
    assert_one_line_error(r, "cannot write the run directory")


def test_output_path_that_is_a_file(base, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    args = [a if a != str(tmp_path / "run") else str(blocker / "run") for a in base]
    r = fastvit("train", "--arch", "vit_tiny", *args)
    assert_one_line_error(r, "cannot write the run directory")
    assert blocker.read_text() == "not a folder"


def test_finetune_needs_init():
    assert_one_line_error(fastvit("finetune", "--arch", "vit_tiny"), "--init")


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    assert_one_line_error(fastvit("train", "--resume", str(tmp_path)), "not a fastvit run dir")


def test_print_config_applies_recipe_then_flags():
    r = fastvit("train", "--recipe", "drloc21", "--epochs", "7", "--no-drloc-abs", "--print-config")
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["epochs"] == 7 and cfg["drloc_abs"] is False  # explicit flags win
    assert cfg["drloc"] is True and cfg["grad_clip"] == 5.0 and cfg["augment"] == "drloc21"  # the recipe's


def test_unknown_recipe():
    assert_one_line_error(fastvit("train", "--recipe", "nope", "--print-config"), "unknown recipe", "drloc21")


def test_every_subcommand_has_help():
    for cmd in (["train"], ["pretrain"], ["finetune"], ["eval"], ["data"], ["data", "prepare"], ["data", "info"],
                ["plot"], ["attention-map"]):
        r = fastvit(*cmd, "--help")
        assert r.returncode == 0 and "usage: fastvit" in r.stdout, (cmd, r.stderr)


def test_missing_dataset_says_how_to_get_it(tmp_path):
    r = fastvit("train", "--arch", "vit_tiny", "--dataset", "svhn", "--cache-dir", str(tmp_path / "c"),
                "--out", str(tmp_path / "r"))
    assert_one_line_error(r, "fastvit data prepare svhn")
    assert not (tmp_path / "r").exists()


def test_plot_of_a_missing_run(tmp_path):
    assert_one_line_error(fastvit("plot", str(tmp_path)), "metrics.jsonl")


def test_data_info_of_a_missing_file(tmp_path):
    r = fastvit("data", "info", str(tmp_path / "x.beton"))
    assert_one_line_error(r, "x.beton")


@pytest.mark.parametrize("command", [[str(Path(sys.executable).with_name("fastvit"))],
                                     [sys.executable, "-m", "fastvit"]])
def test_console_script_and_module_exit_2_on_bad_input(command):
    r = subprocess.run([*command, "train", "--arch", "vit_tiny", "--print-config"], capture_output=True,
                       text=True, env={**os.environ}, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["arch"] == "vit_tiny", r.stderr
    r = subprocess.run([*command, "train", "--epochs", "0"], capture_output=True, text=True, timeout=120)
    assert_one_line_error(r, "--epochs must be positive")


# ---------------------------------------------------------------- help: what each command takes


def help_entries(text: str) -> dict[str, str]:
    """{"--flag": its help text} from argparse's help output (an entry runs until the next option)."""
    entries, current = {}, None
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith("  -"):
            current = stripped.split()[0].rstrip(",")
            entries[current] = stripped
        elif current and line.startswith("    "):
            entries[current] += " " + stripped
        else:
            current = None
    return entries


@pytest.mark.parametrize("command,has,lacks", [
    ("train", ["--drloc", "--drloc-mode", "--augment", "--label-smoothing", "--eval-every", "--lr"],
     ["--init", "--dino-out-dim", "--teacher-temp", "--local-scale", "--n-local"]),
    ("pretrain", ["--dino-out-dim", "--teacher-temp", "--local-scale", "--n-local", "--freeze-last-layer", "--lr"],
     ["--init", "--drloc", "--drloc-mode", "--drloc-lambda", "--augment", "--label-smoothing", "--eval-every"]),
    ("finetune", ["--init", "--drloc", "--augment", "--eval-every", "--lr"],
     ["--dino-out-dim", "--teacher-temp", "--local-scale"]),
])  # fmt: skip
def test_help_shows_only_the_flags_of_the_command(command, has, lacks):
    r = fastvit(command, "--help")
    assert r.returncode == 0, r.stderr
    entries = help_entries(r.stdout)
    assert set(has) <= set(entries), set(has) - set(entries)
    assert not set(lacks) & set(entries), set(lacks) & set(entries)
    for heading in ("what to run:", "data:", "optimisation", "runtime:"):
        assert f"\n{heading}" in r.stdout, heading
    assert ("L_drloc auxiliary loss" in r.stdout) == (command != "pretrain")
    assert ("self-supervised pretraining: DINO" in r.stdout) == (command == "pretrain")


def test_flags_of_other_commands_are_refused():
    assert_one_line_error(fastvit("pretrain", "--drloc", "--print-config"), "unrecognized arguments: --drloc")
    assert_one_line_error(fastvit("train", "--init", "x.pt", "--print-config"), "unrecognized arguments: --init")
    r = fastvit("pretrain", "--print-config")  # the fields it lacks still resolve (to their defaults)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["drloc"] is False and json.loads(r.stdout)["command"] == "pretrain"


@pytest.mark.parametrize("command", ["train", "pretrain", "finetune"])
def test_help_lists_choices_and_each_default_once(command):
    from fastvit import config, models

    entries = help_entries(fastvit(command, "--help").stdout)
    assert all(name in entries["--arch"] for name in models.names())
    assert all(name in entries["--dataset"] for name in ("cifar10", "fashion-mnist", "tiny-imagenet"))
    assert all(p in entries["--precision"] for p in config.PRECISIONS)
    assert all(name in entries["--recipe"] for name in config.recipe_names())
    if command != "pretrain":
        assert "none" in entries["--augment"] and "drloc21" in entries["--augment"]
        assert all(m in entries["--drloc-mode"] for m in config.DRLOC_MODES)
    for flag, text in entries.items():
        assert text.count("default") <= 1, (flag, text)
    assert "(default: 10)" in entries["--epochs"] and "(default: 0.001)" in entries["--lr"]
    assert "(default: auto)" in entries["--compile"] and "(default: auto)" in entries["--precision"]
    assert "(default: off)" in entries["--deterministic"]
    if command == "pretrain":
        assert "default by dataset: 0.2,0.5" in entries["--local-scale"]  # the field's own text, alone
    assert "(default: None)" not in "".join(entries.values())


def test_a_default_is_shown_as_the_flag_is_written():
    import dataclasses

    from fastvit.cli import _help

    @dataclasses.dataclass
    class Fields:
        scale: tuple[float, float] = dataclasses.field(default=(0.7, 1.0), metadata={"help": "crop scale"})
        flip: bool = dataclasses.field(default=True, metadata={"help": "flip 50%"})
        size: int | None = dataclasses.field(default=None, metadata={"help": "size"})

    scale, flip, size = dataclasses.fields(Fields)
    assert _help(scale) == "crop scale (default: 0.7,1.0)"
    assert _help(flip) == "flip 50%% (default: on)"  # argparse %-formats help
    assert _help(size) == "size"


def test_every_flag_field_has_a_heading():
    """A Config field added without a group would land under "other": each one names a known group."""
    import dataclasses

    from fastvit import config

    flags = [f for f in dataclasses.fields(config.Config) if f.metadata.get("flag", True)]
    assert [f.name for f in flags if f.metadata.get("group") not in config.GROUPS] == []


def test_data_prepare_lists_the_datasets_and_refuses_others(tmp_path):
    from fastvit import loaders

    text = fastvit("data", "prepare", "--help").stdout
    assert all(name in text for name in loaders.DATASETS)
    r = fastvit("data", "prepare", "mnist", "--src", tmp_path, "--out", tmp_path / "out")
    assert_one_line_error(r, "invalid choice: 'mnist'", "cifar10")
    assert not (tmp_path / "out").exists()


def test_version():
    import fastvit as package

    r = fastvit("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"fastvit {package.__version__}"


# ---------------------------------------------------------------- eval


def test_eval_finds_the_data_where_the_checkpoint_trained(tiny_checkpoint, fmnist_dir, cache_dir, tmp_path,
                                                          monkeypatch):
    explicit = fastvit("eval", "--ckpt", tiny_checkpoint, "--data-dir", fmnist_dir, "--cache-dir", cache_dir)
    assert explicit.returncode == 0, explicit.stderr
    # nothing to find in the default places: only the checkpoint's config can lead to the data
    monkeypatch.setenv("FASTVIT_DATA", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    r = fastvit("eval", "--ckpt", tiny_checkpoint)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["dataset"] == "fashion-mnist" and result["images"] == 256  # the run's test split, not the real one
    assert result["test_acc1"] == json.loads(explicit.stdout)["test_acc1"]
    r = fastvit("eval", "--ckpt", tiny_checkpoint, "--knn", "--knn-bank", "64", "--knn-test", "32")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["dataset"] == "fashion-mnist"
    assert not (tmp_path / "empty-cache").exists()


# ---------------------------------------------------------------- the progress line


def test_progress_line_shows_current_rate_and_the_whole_runs_eta(monkeypatch):
    from fastvit import train

    now = [0.0]
    monkeypatch.setattr(train.time, "perf_counter", lambda: now[0])
    pace = train.RunPace(step=0, total_steps=100)
    now[0] = 20.0  # the first interval holds the compile: 10 steps in 20 s
    assert pace.postfix(10, images_per_step=64) == {"img/s": "32", "run ETA": "03:00"}  # 90 steps at 0.5/s
    now[0] = 25.0  # 10 steps in 5 s
    assert pace.postfix(20, images_per_step=64) == {"img/s": "128", "run ETA": "00:40"}  # 80 at 2/s
    now[0] = 40.0  # an evaluation in between: 10 steps in 15 s; since the first log 20 steps in 20 s
    assert pace.postfix(30, images_per_step=64) == {"img/s": "43", "run ETA": "01:10"}
    resumed = train.RunPace(step=90, total_steps=100)  # a resumed run counts only what is left
    now[0] = 45.0
    assert resumed.postfix(95, images_per_step=64)["run ETA"] == "00:05"


# ---------------------------------------------------------------- .beton files that are not what they say


def test_data_info_of_a_file_that_is_not_a_beton(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n" * 1000)
    assert_one_line_error(fastvit("data", "info", notes), "notes.txt: not a fastvit .beton")


def damaged_copy(cache_dir, where, offset, change):
    """The prepared small Fashion-MNIST pair copied to `where`, the train file's byte at `offset`
    replaced by change(byte)."""
    import shutil

    from fastvit.loaders import beton

    where.mkdir()
    for name in ("fashion-mnist-train.beton", "fashion-mnist-test.beton"):
        for path in (cache_dir / name, beton.sidecar_path(cache_dir / name)):
            shutil.copy(path, where / path.name)
    train = where / "fashion-mnist-train.beton"
    data = bytearray(train.read_bytes())
    data[offset] = change(data[offset])
    train.write_bytes(bytes(data))
    return train


def test_a_label_byte_of_200_is_one_line_everywhere(cache_dir, tmp_path):
    from fastvit.loaders import beton

    records = beton._HEADER.itemsize + 2 * beton._FIELD_DESC.itemsize  # (image ptr, label) per sample
    train = damaged_copy(cache_dir, tmp_path / "ready", records + 16 * 5 + 8, lambda _: 200)  # sample 5's label
    assert_one_line_error(fastvit("data", "info", train), "sample 5 has label 200, outside 0..9")
    r = fastvit("train", "--arch", "vit_tiny", "--data-dir", tmp_path / "ready", "--cache-dir", tmp_path / "cache",
                "--out", tmp_path / "run")
    assert_one_line_error(r, "sample 5 has label 200")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_a_flipped_shape_byte_is_one_line(cache_dir, tmp_path):
    from fastvit.loaders import beton

    width = beton._HEADER.itemsize + 17 + 8  # image descriptor: type id, 16-byte name, dims H, W, C (uint64)
    train = damaged_copy(cache_dir, tmp_path / "ready", width, lambda b: b ^ 0x04)  # 28 -> 24
    assert_one_line_error(fastvit("data", "info", train), "images are 28x24x1", "sidecar says 28x28x1")
    r = fastvit("train", "--arch", "vit_tiny", "--data-dir", tmp_path / "ready", "--cache-dir", tmp_path / "cache",
                "--out", tmp_path / "run")
    assert_one_line_error(r, "images are 28x24x1")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- data prepare


def test_data_prepare_out_that_is_a_file(fmnist_dir, tmp_path):
    (tmp_path / "out").write_text("mine")
    r = fastvit("data", "prepare", "fashion-mnist", "--src", fmnist_dir, "--out", tmp_path / "out")
    assert_one_line_error(r, "--out", "exists and is not a folder")
    assert (tmp_path / "out").read_text() == "mine"


def test_data_prepare_on_a_full_disk(fmnist_dir, full_disk):
    r = fastvit("data", "prepare", "fashion-mnist", "--src", fmnist_dir, "--out", full_disk / "out")
    assert_one_line_error(r, "cannot write: No space left on device", max_lines=2)  # under the progress bar
    assert list(full_disk.iterdir()) == []


def test_a_pair_flag_takes_exactly_two_numbers():
    assert_one_line_error(fastvit("pretrain", "--local-scale", "0.5", "--print-config"), "--local-scale",
                          "two numbers LO,HI", "'0.5'")
    assert_one_line_error(fastvit("pretrain", "--global-scale", "a,b", "--print-config"), "--global-scale")
    r = fastvit("pretrain", "--local-scale", "0.1,0.4", "--print-config")
    assert r.returncode == 0 and json.loads(r.stdout)["local_scale"] == [0.1, 0.4]
