"""End-to-end runs of the real CLI on a small Fashion-MNIST-format dataset (see conftest.py)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fastvit import checkpoint


def run_cli(*args, timeout=600, prefix=(sys.executable, "-m", "fastvit")):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two CPU cores: keep concurrent test processes apart
    return subprocess.run([*prefix, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def data_args(fmnist_dir, cache_dir):
    return ["--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--cache-dir", cache_dir]


def model_tensors(path: Path) -> dict:
    return checkpoint.load(path)["model"]


def test_train_eval_plot_end_to_end(data_args, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--arch", "vit_tiny", *data_args, "--epochs", "3", "--batch-size", "64", "--lr", "2e-3",
                "--warmup-epochs", "0.5", "--out", out, "--log-every", "4")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert {"epoch", "train_loss", "test_acc1", "test_acc5", "lr", "images_per_s", "seconds"} <= set(row)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["test_acc1"] > 60, rows  # the squares are easy: chance is 10%
    assert list((out / "tb").glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert "img/s=" in r.stderr and "run ETA=" in r.stderr  # the progress line

    best = checkpoint.load(out / "best.pt")
    assert best["epoch"] == max(rows, key=lambda row: row["test_acc1"])["epoch"]
    assert not any(k.startswith("_orig_mod") or k.startswith("module.") for k in best["model"])

    r = run_cli("eval", "--ckpt", out / "best.pt", *data_args[2:], "--batch-size", "100")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["images"] == 256
    assert result["test_acc1"] == pytest.approx(best["best_acc1"], abs=1e-9)

    r = run_cli("plot", out)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from PIL import Image

    Image.fromarray((np.arange(28 * 28) % 255).astype(np.uint8).reshape(28, 28)).save(tmp_path / "digit.png")
    r = run_cli("attention-map", "--ckpt", out / "best.pt", "--image", tmp_path / "digit.png")
    assert r.returncode == 0, r.stderr
    with Image.open(r.stdout.strip()) as picture:
        assert picture.format == "PNG" and picture.width > 200
    r = run_cli("attention-map", "--ckpt", out / "best.pt", "--image", tmp_path / "missing.png")
    assert r.returncode == 2 and "cannot read image" in r.stderr


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(data_args, tmp_path):
    common = ["--arch", "vit_tiny", *data_args, "--epochs", "2", "--subset", "512", "--batch-size", "64",
              "--deterministic", "--save-every", "3", "--drop-path", "0.1", "--seed", "5"]
    total_steps = 2 * 512 // 64
    reference = tmp_path / "uninterrupted"
    r = run_cli("train", *common, "--out", reference)
    assert r.returncode == 0, r.stderr

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fastvit", "train", *map(str, common), "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not (killed / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    state = checkpoint.load(killed / "last.pt")
    assert 0 < state["step"] < total_steps and state["step"] % (512 // 64) != 0, "not killed mid-epoch"

    r = run_cli("train", "--resume", killed)
    assert r.returncode == 0, r.stderr
    a, b = model_tensors(reference / "last.pt"), model_tensors(killed / "last.pt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert checkpoint.load(killed / "last.pt")["step"] == total_steps
    epochs = [json.loads(line)["epoch"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(data_args, tmp_path):
    common = ["--arch", "vit_tiny", *data_args, "--epochs", "1", "--subset", "256", "--augment", "none",
              "--drop-path", "0", "--label-smoothing", "0", "--warmup-epochs", "0", "--device", "cpu",
              # equal math: auto may pick bf16, or another attention backend, for one batch size and not the other
              "--precision", "fp32", "--attn", "math"]
    r = run_cli("train", *common, "--batch-size", "64", "--out", tmp_path / "one")
    assert r.returncode == 0, r.stderr
    r = run_cli("--standalone", "--nproc_per_node=2", "-m", "fastvit", "train", *common, "--batch-size", "32",
                "--out", tmp_path / "two", prefix=(sys.executable, "-m", "torch.distributed.run"))
    assert r.returncode == 0, r.stderr
    one, two = model_tensors(tmp_path / "one" / "last.pt"), model_tensors(tmp_path / "two" / "last.pt")
    start = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["step"]
    assert start == 256 // 64
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=2e-5, msg=name)
    m1 = json.loads((tmp_path / "one" / "metrics.jsonl").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.jsonl").read_text())
    assert m1["test_acc1"] == pytest.approx(m2["test_acc1"], abs=0.5)
    assert m1["train_loss"] == pytest.approx(m2["train_loss"], rel=1e-4)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(data_args, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--arch", "vit_tiny", *data_args, "--epochs", "2", "--subset", "512", "--batch-size", "64",
                "--lr", "1e30", "--warmup-epochs", "1", "--warmup-lr", "0", "--save-every", "1", "--log-every", "1",
                "--out", out)
    assert r.returncode == 1, r.stderr
    message = r.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert "NaN/Inf at step" in message and str(out / "last.pt") in message
    bad_step = int(message.split("at step ")[1].split(";")[0])
    state = checkpoint.load(out / "last.pt")
    assert state["step"] == bad_step  # saved after the last finite step, never after the bad one
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_corrupted_checkpoint_is_refused_on_resume(data_args, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--arch", "vit_tiny", *data_args, "--epochs", "1", "--subset", "128", "--batch-size", "64",
                "--out", out)
    assert r.returncode == 0, r.stderr
    blob = bytearray((out / "last.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # inside the tensor data: torch itself would load this silently
    (out / "last.pt").write_bytes(bytes(blob))
    r = run_cli("train", "--resume", out, "--epochs", "2", "--resume-new-schedule")
    assert r.returncode == 2
    assert "last.pt is corrupt" in r.stderr.strip().splitlines()[-1]


def test_drloc_training_reports_its_loss(data_args, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--arch", "vit_tiny", *data_args, "--epochs", "1", "--subset", "256", "--batch-size", "64",
                "--drloc", "--drloc-mode", "l1", "--out", out)
    assert r.returncode == 0, r.stderr
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["drloc_loss"] > 0
    state = checkpoint.load(out / "last.pt")
    assert any(k.startswith("drloc.") for k in state["objective"])


@pytest.mark.parametrize("command, augment", [("train", "drloc21"), ("pretrain", "gani22-pretrain")])
def test_bf16_runs_augment_in_fp32(command, augment, data_args, tmp_path):
    # Under autocast, the augmentation's convs (sharpness) came out in bf16 and Mixup's fp32 lerp weight
    # then failed: the CI machine with AMX picks bf16 by itself, this test asks for it on every CPU.
    out = tmp_path / "run"
    what = ["--augment", augment] if command == "train" else ["--recipe", augment, "--knn-every", "0"]
    r = run_cli(command, "--arch", "vit_tiny_p8", *data_args, *what, "--epochs", "1", "--subset", "32",
                "--batch-size", "16", "--precision", "bf16", "--out", out)
    assert r.returncode == 0, r.stderr
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(row["train_loss"])
    assert json.loads((out / "config.json").read_text())["resolved"]["precision"] == "bf16"


def test_pretrain_then_finetune_loads_every_backbone_key(data_args, tmp_path):
    pre = tmp_path / "pre"
    # 4 batches per pass; --steps-per-epoch 2 makes each of the 2 epochs half a pass
    r = run_cli("pretrain", "--arch", "vit_tiny", *data_args, "--epochs", "2", "--steps-per-epoch", "2", "--subset",
                "128", "--batch-size", "32", "--n-local", "2", "--dino-out-dim", "64", "--out", pre)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (pre / "metrics.jsonl").read_text().splitlines()]
    assert [(row["epoch"], row["step"]) for row in rows] == [(1, 2), (2, 4)]
    teacher = checkpoint.load(pre / "last.pt")["teacher_backbone"]
    ft = tmp_path / "ft"
    r = run_cli("finetune", "--init", pre / "last.pt", "--arch", "vit_tiny", *data_args, "--epochs", "1",
                "--subset", "128", "--batch-size", "32", "--out", ft, "--lr", "1e-12", "--warmup-epochs", "0",
                "--weight-decay", "0", "--drop-path", "0", "--min-lr", "0")
    assert r.returncode == 0, r.stderr
    report = [line for line in r.stderr.splitlines() + r.stdout.splitlines() if "not loaded" in line]
    assert all("head." in line for line in report), report  # only the fresh classifier is not loaded
    assert not any("not a parameter" in line for line in report)
    tuned = checkpoint.load(ft / "last.pt")["model"]
    for name, value in teacher.items():  # lr ~ 0: every backbone tensor still equals the teacher's
        torch.testing.assert_close(tuned[name], value, rtol=0, atol=1e-6, msg=name)


def test_jpeg_imagefolder_trains_through_the_ffcv_loader(tmp_path):
    """Images > 64 px of varying size are stored as JPEG, decoded and resized by FFCV for training and eval."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("test", 32)):
        for c in range(2):
            folder = tmp_path / "src" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n // 2):
                h, w = (int(v) for v in rng.integers(80, 120, size=2))
                pixels = np.clip(60 + 120 * c + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    out = tmp_path / "run"
    common = ["--dataset", "imagefolder", "--data-dir", tmp_path / "src", "--cache-dir", tmp_path / "cache"]
    r = run_cli("train", "--arch", "vit_tiny", *common, "--img-size", "32", "--epochs", "2", "--batch-size", "16",
                "--lr", "2e-3", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "FFCVLoader" in r.stdout + r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2] and rows[-1]["test_acc1"] > 90  # dark vs bright classes
    r = run_cli("eval", "--ckpt", out / "last.pt", *common[2:])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["test_acc1"] == pytest.approx(rows[-1]["test_acc1"])
    r = run_cli("train", "--arch", "vit_tiny", *common, "--img-size", "32", "--loader", "resident",
                "--out", tmp_path / "r2")
    assert r.returncode == 2 and "use --loader ffcv or auto" in r.stderr
