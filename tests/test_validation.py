"""Every bad value ends in one short message and exit 2 before anything is written; an existing run is
never overwritten or rewritten by a refused command; the config saved is the one that ran."""

import contextlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastvit import checkpoint, config, models, train
from tests.cli_runner import fastvit


def assert_refused(result, *needles, max_lines=2):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= max_lines and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.fixture
def data(fmnist_dir, cache_dir):
    return ["--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--cache-dir", cache_dir]


BAD_FLAGS = [
    (["train", "--beta1", "2"], "--beta1 must be in [0, 1)"),
    (["train", "--beta2", "1"], "--beta2 must be in [0, 1)"),
    (["train", "--weight-decay", "nan"], "--weight-decay must be a finite number"),
    (["train", "--warmup-epochs", "nan"], "--warmup-epochs must be a finite number"),
    (["train", "--lr", "inf"], "--lr must be a finite number"),
    (["train", "--label-smoothing", "5"], "--label-smoothing must be in [0, 1)"),
    (["train", "--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    (["train", "--weight-decay-end", "-0.1"], "--weight-decay-end must be >= 0"),
    (["train", "--mix-prob", "1.5"], "--mix-prob must be in [0, 1]"),
    (["pretrain", "--local-scale", "0.5"], "two numbers"),
    (["pretrain", "--global-scale", "0.9,0.5"], "--global-scale must be two numbers LOW,HIGH"),
    (["pretrain", "--local-scale", "0,0.5"], "0 < LOW <= HIGH <= 1"),
    (["pretrain", "--local-scale", "0.2,1.5"], "0 < LOW <= HIGH <= 1"),
    (["pretrain", "--teacher-temp", "0"], "--teacher-temp must be positive"),
]


@pytest.mark.parametrize("args,needle", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_value_is_one_line_and_writes_nothing(args, needle, tmp_path):
    assert_refused(fastvit(*args, "--arch", "vit_tiny_p8", "--out", tmp_path / "run"), needle)
    assert not (tmp_path / "run").exists()


BAD_RECIPES = [
    ("lr = 1e-3\nepochs = \n", "is not valid TOML"),
    ('lr = "fast"\n', "lr must be a number, got 'fast'"),
    ("epochs = 2.5\n", "epochs must be an integer"),
    ("drloc = 1\n", "drloc must be true or false"),
    ("local_scale = [0.5]\n", "local_scale must be 2 numbers"),
    ("beta1 = 1.5\n", "--beta1 must be in [0, 1)"),
    ("no_such_field = 1\n", "unknown fields ['no_such_field']"),
]


@pytest.mark.parametrize("text,needle", BAD_RECIPES, ids=[n for _, n in BAD_RECIPES])
def test_bad_user_recipe_file_is_one_line(text, needle, tmp_path):
    recipe = tmp_path / "mine.toml"
    recipe.write_text(text)
    assert_refused(fastvit("train", "--recipe", recipe, "--out", tmp_path / "run"), needle)
    assert not (tmp_path / "run").exists()


def test_user_recipe_file_applies_and_missing_file_is_refused(tmp_path):
    recipe = tmp_path / "mine.toml"
    recipe.write_text("lr = 2\nlocal_scale = [0.1, 0.4]\n")  # an int for a float field is fine
    r = fastvit("pretrain", "--recipe", recipe, "--print-config")
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    assert printed["lr"] == 2 and printed["local_scale"] == [0.1, 0.4]
    assert_refused(fastvit("train", "--recipe", tmp_path / "nope.toml"), "recipe file", "does not exist")


def test_print_config_shows_derived_values(data):
    r = fastvit("train", "--arch", "swin_tiny", "--drloc", *data, "--subset", 256, "--batch-size", 64,
                "--epochs", 3, "--warmup-epochs", 0.5, "--print-config")
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    assert printed["drloc_lambda"] == 0.5  # swin's, resolved into the config itself
    derived = printed["derived"]
    assert (derived["steps_per_epoch"], derived["total_steps"], derived["warmup_steps"]) == (4, 12, 2)
    r = fastvit("train", "--arch", "vit_tiny", "--schedule-epochs", 6, "--epochs", 3, *data, "--subset", 256,
                "--batch-size", 64, "--print-config")
    derived = json.loads(r.stdout)["derived"]
    assert (derived["total_steps"], derived["schedule_steps"]) == (12, 24)
    r = fastvit("train", "--arch", "vit_tiny", "--print-config", "--cache-dir", "/nonexistent")
    assert json.loads(r.stdout)["derived"]["steps_per_epoch"] is None  # data not prepared: unknown


def test_subset_larger_than_the_dataset(data, tmp_path):
    assert_refused(fastvit("train", "--arch", "vit_tiny_p8", *data, "--subset", 100000, "--out", tmp_path / "run"),
                   "--subset 100000 is more than the 1024 training images")
    assert not (tmp_path / "run").exists()


def test_drloc_multiscale_on_a_single_grid_arch(data, tmp_path):
    assert_refused(fastvit("train", "--arch", "vit_tiny_p8", *data, "--drloc", "--drloc-multiscale",
                           "--out", tmp_path / "run"), "--drloc-multiscale needs a multi-stage arch")
    assert not (tmp_path / "run").exists()


def test_finetune_init_from_another_arch_is_refused(data, tmp_path):
    """A vit pretrain checkpoint (the format `fastvit pretrain` saves: a teacher_backbone entry) into swin."""
    backbone = models.create("vit_tiny_p8", img_size=32, num_classes=0, in_chans=1).state_dict()
    checkpoint.save({"teacher_backbone": backbone}, tmp_path / "vit_pretrain.pt")
    r = fastvit("finetune", "--arch", "swin_tiny", *data, "--init", tmp_path / "vit_pretrain.pt",
                "--out", tmp_path / "run")
    assert_refused(r, "none of its", "backbone tensors matches", "another arch")
    assert not (tmp_path / "run").exists()


# ---- existing runs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, fmnist_dir, cache_dir):
    out = tmp_path_factory.mktemp("finished") / "run"
    cfg = config.build({"arch": "vit_tiny_p8", "dataset": "fashion-mnist", "data_dir": str(fmnist_dir),
                        "cache_dir": str(cache_dir), "epochs": 1, "subset": 64, "batch_size": 64, "out": str(out)})
    train.run(cfg)
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    return run


def run_files(run: Path) -> dict:
    return {name: (run / name).read_bytes() for name in ("config.json", "metrics.jsonl", "last.pt")}


def test_training_into_an_existing_run_dir_is_refused(run_copy, data):
    before = run_files(run_copy)
    assert_refused(fastvit("train", "--arch", "vit_tiny_p8", *data, "--subset", 64, "--out", run_copy),
                   "already holds a run", f"--resume {run_copy}")
    assert run_files(run_copy) == before


@pytest.mark.parametrize("flags,needle", [
    (["--arch", "vit_tiny"], "--arch vit_tiny_p8 -> vit_tiny"),
    (["--batch-size", "32"], "--batch-size 64 -> 32"),
    (["--img-size", "64"], "--img-size unset -> 64"),
    (["--dataset", "cifar10"], "--dataset fashion-mnist -> cifar10"),
    (["--epochs", "3"], "--resume-new-schedule"),
    (["--lr", "0.01"], "--resume-new-schedule"),
])
def test_resume_refuses_flags_that_contradict_the_run(run_copy, flags, needle):
    before = run_files(run_copy)
    assert_refused(fastvit("train", "--resume", run_copy, *flags), "flags contradict the run", needle)
    assert run_files(run_copy) == before


def test_resume_with_another_command_or_out_is_refused(run_copy, tmp_path):
    before = run_files(run_copy)
    assert_refused(fastvit("pretrain", "--resume", run_copy), "that run is `fastvit train`")
    assert_refused(fastvit("train", "--resume", run_copy, "--out", tmp_path / "other"), "in place", "cp -r")
    assert not (tmp_path / "other").exists()
    assert run_files(run_copy) == before


def test_resume_new_schedule_is_accepted_explicitly(run_copy):
    before = run_files(run_copy)
    r = fastvit("train", "--resume", run_copy, "--epochs", "3", "--resume-new-schedule", "--print-config")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["epochs"] == 3
    assert run_files(run_copy) == before  # --print-config writes nothing


def test_resume_checks_the_checkpoint_not_only_config_json(run_copy):
    """A config.json that no longer matches last.pt (edited, or rewritten by an old version)."""
    saved = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**saved, "arch": "vit_tiny"}))
    before = run_files(run_copy)
    assert_refused(fastvit("train", "--resume", run_copy), "last.pt was saved by another configuration",
                   "arch vit_tiny_p8 in last.pt, vit_tiny now")
    assert run_files(run_copy) == before


def test_config_json_records_derived_values(finished_run):
    saved = json.loads((finished_run / "config.json").read_text())
    assert saved["derived"]["steps_per_epoch"] == 1 and saved["derived"]["total_steps"] == 1
    assert checkpoint.load(finished_run / "last.pt")["config"] == {
        k: v for k, v in saved.items() if k not in config.RECORD_ONLY_KEYS}


# ---- the config is what ran


def test_augment_none_applies_label_smoothing():
    logits = torch.randn(6, 10, dtype=torch.float64)
    labels = torch.tensor([0, 3, 9, 9, 1, 4])
    transform = train.eval_tf_with_labels(lambda x: x, num_classes=10, label_smoothing=0.1)
    _, targets = transform(torch.zeros(6), labels, None)
    reference = F.cross_entropy(logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(train.soft_cross_entropy(logits, targets.double()), reference)


@pytest.mark.slow
def test_augment_none_train_loss_depends_on_label_smoothing(fmnist_dir, cache_dir, tmp_path):
    losses = {}
    for smoothing in (0.1, 0.0):
        cfg = config.build({"arch": "vit_tiny_p8", "dataset": "fashion-mnist", "data_dir": str(fmnist_dir),
                            "cache_dir": str(cache_dir), "epochs": 1, "subset": 128, "batch_size": 64,
                            "augment": "none", "label_smoothing": smoothing, "out": str(tmp_path / f"ls{smoothing}")})
        losses[smoothing] = train.run(cfg)["train_loss"]
    # same init, same batches: smoothed CE = 0.9 CE + 0.1 (mean -log p) > CE once the model is not uniform
    assert losses[0.1] != losses[0.0]


# ---- disk full


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here: {r.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def error_lines(stderr: str) -> list[str]:
    """stderr without the progress bar's redraws (lines starting 'epoch N/M')."""
    return [ln for ln in stderr.replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith("epoch ")]


def test_disk_full_at_the_first_checkpoint(small_disk, data):
    r = fastvit("train", "--arch", "vit_tiny_p8", *data, "--subset", 64, "--batch-size", 64, "--epochs", 1,
                "--save-every", 1, "--out", small_disk / "run")
    assert r.returncode == 2, r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "cannot write checkpoint" in lines[0] and "No space left" in lines[0], lines
    assert not list((small_disk / "run").glob("*.pt")) and not list((small_disk / "run").glob(".*.tmp"))


def test_disk_full_before_the_run_dir_is_written(small_disk, data):
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    r = fastvit("train", "--arch", "vit_tiny_p8", *data, "--subset", 64, "--batch-size", 64, "--epochs", 1,
                "--out", small_disk / "run")
    assert_refused(r, "cannot write the run directory", "No space left", max_lines=1)
    assert not (small_disk / "run").exists()


def test_more_epochs_of_a_fixed_schedule_are_no_schedule_change():
    """--schedule-epochs fixes the curves: --epochs may grow up to it on resume (one epoch per call)."""
    saved = {"epochs": 1, "schedule_epochs": 6, "lr": 1e-3}
    assert config.resume_conflicts(saved, {"epochs": 2}, new_schedule=False) == []
    assert config.resume_conflicts(saved, {"epochs": 7}, new_schedule=False) == [("epochs", 1, 7)]
    assert config.resume_conflicts(saved, {"epochs": 2, "schedule_epochs": 8}, new_schedule=False) == [
        ("epochs", 1, 2), ("schedule_epochs", 6, 8)]
    assert config.resume_conflicts({**saved, "schedule_epochs": None}, {"epochs": 2}, new_schedule=False) == [
        ("epochs", 1, 2)]
    assert config.resume_conflicts(saved, {"epochs": 9, "lr": 1.0}, new_schedule=True) == []
