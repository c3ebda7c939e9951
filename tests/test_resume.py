"""Kill a tiny deterministic run at seeded moments (before its first checkpoint, inside the epoch-end
evaluation, mid-step, mid-write) and resume it: the result must be the uninterrupted run's, bit for bit.
Also: NaN stops name a checkpoint that exists and is finite."""

import contextlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastvit import checkpoint
from fastvit.cli import main

STEPS_PER_EPOCH, EPOCHS = 4, 2  # --subset 256 / --batch-size 64
LAST_PT_WRITES = EPOCHS * (STEPS_PER_EPOCH + 1)  # --save-every 1, plus the epoch-end save
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RECORDED = ("epoch", "step", "train_loss", "lr", "test_acc1", "test_acc5")  # metrics not about timing


def fastvit_args(*args):
    return [sys.executable, "-m", "fastvit", *map(str, args)]


@pytest.fixture
def data_args(fmnist_dir, cache_dir):
    return ["--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--cache-dir", cache_dir]


def tiny_run(data_args):
    return ["train", "--arch", "vit_tiny_p8", *data_args, "--epochs", EPOCHS, "--subset", 256, "--batch-size", 64,
            "--deterministic", "--save-every", 1, "--seed", 3, "--warmup-epochs", 0.5]


def recorded_metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: row.get(k) for k in RECORDED} for row in rows]


def file_version(path: Path):
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def run_and_kill(cmd: list, run_dir: Path, writes: int, delay: float) -> int:
    """Start cmd; SIGKILL it `delay` s after its `writes`-th replacement of last.pt (0: after config.json
    appears, i.e. before the first checkpoint). Returns how many last.pt versions it had seen."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    seen, current, deadline = 0, None, time.time() + 600
    target = run_dir / ("last.pt" if writes else "config.json")
    while proc.poll() is None and time.time() < deadline:
        version = file_version(target)
        if writes == 0 and version is not None:
            break
        if writes and version is not None and version != current:
            seen, current = seen + 1, version
            if seen == writes:
                break
        time.sleep(0.002)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before the kill"
    return seen


@contextlib.contextmanager
def in_this_process():
    """Run the CLI here (no interpreter start per run), restoring the global state --deterministic sets."""
    threads = torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit:
            yield out
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    assert exit.value.code == 0, err.getvalue()


@pytest.mark.slow
def test_eight_sigkills_at_seeded_moments_each_resume_bitwise_equal(data_args, tmp_path):
    reference = tmp_path / "reference"
    with in_this_process():
        main([str(a) for a in tiny_run(data_args)] + ["--out", str(reference)])
    want = checkpoint.load(reference / "last.pt")["model"]
    want_metrics = recorded_metrics(reference)

    rng = random.Random(13)
    # two chosen moments, six drawn: (last.pt writes to wait for, seconds to wait after that)
    plan = [(0, 0.0),  # before the first checkpoint: right after config.json appears
            (STEPS_PER_EPOCH, 0.0)]  # right after the save of epoch 1's last step: inside its evaluation
    plan += [(rng.randrange(1, LAST_PT_WRITES), rng.uniform(0.0, 0.3)) for _ in range(6)]
    states = []
    for i, (writes, delay) in enumerate(plan):
        run_dir = tmp_path / f"killed{i}"
        run_and_kill(fastvit_args(*tiny_run(data_args), "--out", run_dir), run_dir, writes, delay)
        left = checkpoint.load(run_dir / "last.pt") if (run_dir / "last.pt").exists() else None
        evaluated = (run_dir / "metrics.jsonl").exists() and len(recorded_metrics(run_dir)) > 0
        states.append(None if left is None else (left["step"], left["epoch_sums"] is not None, evaluated))

        with in_this_process() as printed:
            main(["train", "--resume", str(run_dir)])
        if left is None:
            assert "no checkpoint there yet" in printed.getvalue(), printed.getvalue()
        got = checkpoint.load(run_dir / "last.pt")["model"]
        assert got.keys() == want.keys()
        for name in want:
            assert torch.equal(got[name], want[name]), (plan[i], states[-1], name)
        assert recorded_metrics(run_dir) == want_metrics, (plan[i], states[-1])
        assert not list(run_dir.glob(".*.tmp")), "a stale temp file was left"
        assert checkpoint.load(run_dir / "best.pt")["best_acc1"] == max(m["test_acc1"] for m in want_metrics)

    assert states[0] is None, "the first kill came after the first checkpoint"
    # the second left last.pt at the end of epoch 1 with its epoch line not yet written
    assert states[1] == (STEPS_PER_EPOCH, True, False), states[1]


def test_stale_temp_files_of_killed_writes_are_removed_on_resume(data_args, tmp_path):
    """A finished 1-step run plus 0-byte temp files a kill leaves (mkstemp ran, the write did not)."""
    run_dir = tmp_path / "run"
    r = subprocess.run(fastvit_args("train", "--arch", "vit_tiny_p8", *data_args, "--epochs", 1, "--subset", 64,
                                    "--batch-size", 64, "--out", run_dir), capture_output=True, text=True, env=ENV,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    before = (run_dir / "last.pt").read_bytes()
    for name in (".last.pt.abc123.tmp", ".best.pt.x9.tmp"):
        (run_dir / name).write_bytes(b"")
    r = subprocess.run(fastvit_args("train", "--resume", run_dir), capture_output=True, text=True, env=ENV,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "removed 2 temp file(s)" in r.stdout
    assert not list(run_dir.glob(".*.tmp"))
    assert (run_dir / "last.pt").read_bytes() == before  # the run was done: resuming trains nothing


@pytest.mark.slow
def test_nan_stop_names_a_checkpoint_that_exists_and_is_finite(data_args, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(fastvit_args("train", "--arch", "vit_tiny_p8", *data_args, "--epochs", 2, "--subset", 256,
                                    "--batch-size", 64, "--lr", "1e6", "--warmup-epochs", 0, "--save-every", 1,
                                    "--out", out), capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 1, r.stderr
    message = r.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert "NaN/Inf" in message, message
    named = re.search(r"newest finite checkpoint is (\S+) \(saved after (\d+) steps\)", message)
    assert named, message
    state = checkpoint.load(named.group(1))
    assert state["step"] == int(named.group(2))
    for part in ("model", "optimizer", "objective"):
        assert checkpoint.nonfinite_tensors(state[part]) == [], part
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    bad_step = int(message.split("at step ")[1].split(";")[0])
    if state["step"] == bad_step:  # the weights saved are the ones that gave the NaN: the message says so
        assert "its weights gave that loss" in message, message


def test_nonfinite_tensors_names_every_bad_tensor_in_a_nested_state():
    state = {"model": {"w": torch.ones(3), "steps": torch.tensor([1, 2])},
             "optimizer": {"state": {0: {"exp_avg": torch.tensor([0.0, float("inf")])}}, "param_groups": [{"lr": 1.0}]},
             "ema": None, "teacher": [torch.full((2,), float("nan"), dtype=torch.float16)]}
    assert checkpoint.nonfinite_tensors(state) == ["optimizer.state.0.exp_avg", "teacher.0"]
    assert checkpoint.nonfinite_tensors({"model": {"w": torch.ones(3)}}) == []


def test_nan_before_any_checkpoint_says_there_is_none(data_args, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(fastvit_args("train", "--arch", "vit_tiny_p8", *data_args, "--epochs", 1, "--subset", 128,
                                    "--batch-size", 64, "--lr", "1e30", "--warmup-epochs", 0, "--log-every", 1,
                                    "--out", out), capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 1, r.stderr
    message = r.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert "NaN/Inf" in message and "there is none to resume from" in message, message
    assert not (out / "last.pt").exists()
