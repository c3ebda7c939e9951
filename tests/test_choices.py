"""fastvit.choices: measured speed choices (precision, compile), their disk cache, and what a run records.
No clocks: every measurement here goes through a fake timer."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from fastvit import choices, cli, train
from fastvit.config import build


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTVIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(choices, "_memory", {})
    return choices


def by_name(times):
    """A fake timer for candidates that are `named(name)` callables: returns times[name], never runs them."""
    return lambda fn, device: times[fn.name]


class named:
    def __init__(self, name):
        self.name, self.calls = name, 0

    def __call__(self):
        self.calls += 1


def test_fastest_caches_the_winner_with_its_times(fresh):
    record = fresh.fastest("k", {"a": named("a"), "b": named("b")}, "cpu", by_name({"a": 2.0, "b": 1.5}))
    assert record == {"choice": "b", "seconds": {"a": 2.0, "b": 1.5}, "measured": True}
    assert json.loads(fresh.cache_path().read_text()) == {"k": record}
    fresh._memory.clear()  # another process
    assert fresh.lookup("k") == record
    assert fresh.lookup("other") is None


def test_fastest_keeps_the_baseline_unless_the_other_wins_by_the_margin(fresh):
    pick = lambda t: fresh.fastest("k", {"fp32": named("fp32"), "bf16": named("bf16")}, "cpu", by_name(t),
                                   baseline="fp32", margin=1.1)["choice"]
    assert pick({"fp32": 1.0, "bf16": 0.95}) == "fp32"
    assert pick({"fp32": 1.0, "bf16": 0.85}) == "bf16"


def test_failing_candidates_are_left_out_and_all_failing_raises(fresh):
    def broken():
        raise RuntimeError("no kernel for this\nsecond line")

    record = fresh.fastest("k", {"bad": broken, "ok": named("ok")}, "cpu", lambda fn, d: fn() or 1.0)
    assert record["choice"] == "ok" and record["failed"] == {"bad": "no kernel for this"}
    with pytest.raises(RuntimeError, match="every candidate failed"):
        fresh.fastest("k2", {"bad": broken}, "cpu", lambda fn, d: fn())


def test_the_real_timer_runs_the_repeats_after_fastest_warmed_up_each_candidate(fresh):
    fn = named("x")
    assert choices.seconds(fn, "cpu", repeats=3) >= 0 and fn.calls == 3
    a, b = named("a"), named("b")
    fresh.fastest("k", {"a": a, "b": b}, "cpu")
    assert a.calls == b.calls == 5  # a warm-up, then one call in each of 4 rounds


def test_interleaved_rounds_keep_a_drifting_machine_from_picking_the_first_candidate(fresh):
    """The machine slows by 20% of the first sample's time per sample (steal on a shared VM). b is 10%
    cheaper; timed a a a a b b b b, a's median would be 1.3 against b's 1.89 and a would win."""
    calls = []

    def drifting(fn, device):
        calls.append(fn.name)
        return {"a": 1.0, "b": 0.9}[fn.name] * (1 + 0.2 * (len(calls) - 1))

    record = fresh.fastest("k", {"a": named("a"), "b": named("b")}, "cpu", drifting)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert record["choice"] == "b"
    assert record["seconds"] == {"a": pytest.approx(1.7), "b": pytest.approx(0.9 * 1.7)}


def test_a_torn_cache_file_is_measured_again(fresh):
    fresh.cache_path().parent.mkdir(parents=True)
    fresh.cache_path().write_text("{not json")
    assert fresh.lookup("k") is None
    fresh.fastest("k", {"a": named("a")}, "cpu", by_name({"a": 1.0}))
    assert json.loads(fresh.cache_path().read_text())["k"]["choice"] == "a"


def test_keys_hold_the_machine_and_library_versions():
    key = json.loads(choices.make_key("precision", "cpu", arch="vit", batch=64))
    assert key["kind"] == "precision" and key["arch"] == "vit" and key["batch"] == 64
    assert key["torch"] == torch.__version__ and f"x{torch.get_num_threads()} threads" in key["device"]


def steps(ran):
    """step_fn for resolve_precision: named candidates that note they were built."""
    def make(precision):
        ran.append(precision)
        return named(precision)
    return make


def test_cpu_precision_is_measured_once_where_the_cpu_has_bf16(monkeypatch, fresh):
    monkeypatch.setattr(fresh, "cpu_has_bf16", lambda: True)
    built = []
    cpu = torch.device("cpu")
    got = fresh.resolve_precision("auto", cpu, steps(built), {"arch": "vit", "batch": 64},
                                  by_name({"fp32": 1.0, "bf16": 0.5}))
    assert got["precision"] == "bf16" and built == ["fp32", "bf16"]
    assert got["how"] == "auto: measured (fp32 1000 ms, bf16 500 ms per fwd+bwd at batch 64)"
    again = fresh.resolve_precision("auto", cpu, steps(built), {"arch": "vit", "batch": 64},
                                    lambda fn, d: pytest.fail("measured twice"))
    assert again["precision"] == "bf16" and again["how"].startswith("auto: cached measurement") and len(built) == 2
    slower = fresh.resolve_precision("auto", cpu, steps([]), {"arch": "swin", "batch": 64},
                                     by_name({"fp32": 1.0, "bf16": 1.2}))
    assert slower["precision"] == "fp32"


def test_cpu_precision_is_not_measured_without_bf16_or_when_deterministic(monkeypatch, fresh):
    built = []
    cpu = torch.device("cpu")
    monkeypatch.setattr(fresh, "cpu_has_bf16", lambda: False)
    assert fresh.resolve_precision("auto", cpu, steps(built), {"batch": 1}) == {
        "precision": "fp32", "how": "auto: this CPU has no bf16 dot-product instructions (not measured)"}
    monkeypatch.setattr(fresh, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(fresh, "may_measure", lambda: False)
    assert fresh.resolve_precision("auto", cpu, steps(built), {"batch": 1})["how"] == (
        "auto: deterministic run (not measured)")
    assert fresh.resolve_precision("bf16", cpu, steps(built), {"batch": 1}) == {"precision": "bf16",
                                                                                "how": "requested"}
    assert built == [] and not fresh.cache_path().exists()


def test_may_measure_follows_deterministic_algorithms():
    assert choices.may_measure()
    torch.use_deterministic_algorithms(True)
    try:
        assert not choices.may_measure()
    finally:
        torch.use_deterministic_algorithms(False)


def test_cuda_precision_is_a_rule(monkeypatch, fresh):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert fresh.resolve_precision("auto", cuda, None, {})["precision"] == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert fresh.resolve_precision("auto", cuda, None, {})["precision"] == "fp16"


def test_compile_auto_is_on_for_cuda_and_on_a_cpu_only_by_a_cached_measurement(fresh):
    cpu, fields = torch.device("cpu"), {"arch": "vit", "batch": 128}
    assert fresh.resolve_compile("auto", torch.device("cuda"), fields, "bf16")["compile"] is True
    assert fresh.resolve_compile(True, cpu, fields, "fp32") == {"compile": True, "how": "requested"}
    assert fresh.resolve_compile(False, torch.device("cuda"), fields, "fp32")["compile"] is False
    assert fresh.resolve_compile("auto", cpu, fields, "fp32")["compile"] is False  # nothing cached
    key = fresh.compile_key(cpu, fields, "fp32")
    fresh.fastest(key, {"eager": named("eager"), "compiled": named("compiled")}, cpu,
                  by_name({"eager": 2.0, "compiled": 1.0}))
    got = fresh.resolve_compile("auto", cpu, fields, "fp32")
    assert got == {"compile": True, "how": "auto: cached measurement (eager 2000 ms, compiled 1000 ms)"}
    assert fresh.resolve_compile("auto", cpu, fields, "bf16")["compile"] is False  # another key


class LossOf(torch.nn.Module):
    """(loss, aux) like train.Supervised; records the dtype its matmul ran in."""

    def __init__(self):
        super().__init__()
        self.linear, self.seen = torch.nn.Linear(3, 2), []

    def forward(self, x):
        y = self.linear(x)
        self.seen.append(y.dtype)
        return y.float().square().sum(), y.detach()


def test_training_step_runs_fwd_bwd_on_a_copy_under_the_precision():
    model = LossOf()
    step = choices.training_step(model, lambda: (torch.ones(4, 3),), "bf16")
    step()
    assert model.linear.weight.grad is None and model.seen == []  # the original is untouched


def test_help_shows_auto_for_precision_and_compile():
    text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "--compile, --no-compile" in text
    assert "(default: auto)" in text.split("--precision PRECISION")[-1].split("--attn")[0]
    assert "(default: auto)" in text.split("--compile, --no-compile")[1].split("--cuda-graphs")[0]
    args = cli.build_parser().parse_args(["train", "--compile"])
    assert args.compile is True
    assert cli.build_parser().parse_args(["train", "--no-compile"]).compile is False
    assert cli.build_parser().parse_args(["train"]).compile is None  # unset: the config's auto
    assert build({}).compile == "auto" and build({}).precision == "auto"


def test_a_run_records_what_auto_chose(monkeypatch, fresh, fmnist_dir, cache_dir, tmp_path, capsys):
    monkeypatch.setattr(choices, "cpu_has_bf16", lambda: True)
    times = {"fp32": 2.0, "bf16": 1.0}
    monkeypatch.setattr(choices, "seconds", lambda fn, device, repeats=3: times.get(getattr(fn, "tag", ""), 1.0))
    real_step = choices.training_step

    def tagged_step(module, example, precision):
        step = real_step(module, example, precision)
        step.tag = precision  # lets the fake timer tell the precisions apart
        return step

    monkeypatch.setattr(choices, "training_step", tagged_step)
    out = tmp_path / "run"
    cfg = build({"arch": "vit_tiny", "dataset": "fashion-mnist", "data_dir": str(fmnist_dir),
                 "cache_dir": str(cache_dir), "epochs": 1, "subset": 64, "batch_size": 32, "out": str(out),
                 "augment": "none"})
    train.run(cfg)
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["precision"] == "bf16" and resolved["precision_how"].startswith("auto: measured")
    assert resolved["compile"] is False and resolved["cuda_graphs"] is False and resolved["tf32"] is False
    (shape, backend), = resolved["attention"].items()  # the step's one attention shape, probed before step 1
    assert shape == "cpu bfloat16 B32 H3 N65x65 D32/32 bias none" and backend in ("sdpa", "math")
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("fastvit train: vit_tiny") and "precision bf16 (auto: measured" in first
    assert "compile off" in first and "attention per shape:" in first
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["resolved"] == resolved


def test_kept_choices_are_reused_without_measuring(monkeypatch, fresh):
    """A resumed run (or a rank other than 0) runs what the record says: no measurement, same backends."""
    import importlib

    from fastvit import models

    attn = importlib.import_module("fastvit.kernels.attention")
    monkeypatch.setattr(attn, "_chosen", {})
    monkeypatch.setattr(choices, "seconds", lambda *a, **k: pytest.fail("measured a kept choice"))
    model = models.create("vit_tiny", img_size=32, num_classes=10)
    shape = "cpu bfloat16 B2 H3 N65x65 D32/32 bias none"
    kept = {"precision": "bf16", "precision_how": "auto: measured (...)", "compile": False,
            "compile_how": "auto: no cached measurement", "attention": {shape: "math"}}
    cfg = build({"arch": "vit_tiny"})
    resolved = train.resolve_speed_choices(cfg, torch.device("cpu"), model, model, None, [(2, 3, 32, 32)],
                                           {"arch": "vit_tiny"}, kept)
    assert resolved == {**kept, "tf32": False, "cuda_graphs": False}


def test_others_share_is_the_other_processes_cpu_time_over_all_cpus():
    # 2 CPUs for 1 s: all processes used 1.5 CPU-s, this one 0.5 -> others 1.0 of 2.0 CPU-s
    assert choices.others_share((10.0, 2.0), (11.5, 2.5), wall=1.0, n_cpus=2) == 0.5
    assert choices.others_share((10.0, 2.0), (10.5, 2.5), wall=1.0, n_cpus=2) == 0.0  # only us
    assert choices.others_share((10.0, 2.0), (10.5, 2.5), wall=0.1, n_cpus=2) is None  # too short to tell
    assert choices.others_share(None, (10.5, 2.5), wall=1.0, n_cpus=2) is None  # no /proc/stat


def test_a_measurement_on_a_loaded_machine_is_used_but_not_cached(monkeypatch, fresh):
    readings = iter([(100.0, 1.0), (100.0 + 2.0 * 0.9 + 0.3, 1.3)])  # others: 90% of 2 CPUs over the 1 s
    clock = iter([0.0, 1.0])
    monkeypatch.setattr(choices, "cpu_seconds", lambda: next(readings))
    monkeypatch.setattr(choices.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(choices.os, "cpu_count", lambda: 2)
    record = fresh.fastest("k", {"a": named("a"), "b": named("b")}, "cpu", by_name({"a": 2.0, "b": 1.5}))
    assert record["choice"] == "b" and record["loaded"] == 0.9
    assert fresh.lookup("k") == record  # this process keeps using it
    assert not fresh.cache_path().exists()  # later runs measure again
    assert fresh.how_measured(record) == "measured while other processes used 90% of the CPUs, so not cached"


def test_busy_processes_beside_a_real_measurement_keep_it_off_disk(fresh):
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.3)  # let them start spinning
        record = fresh.fastest("k", {"sleep": lambda: time.sleep(0.1)}, "cpu")
    finally:
        for p in spinners:
            p.kill()
    assert record["loaded"] > choices.LOADED_SHARE
    assert not fresh.cache_path().exists()


def test_a_compile_in_the_warm_up_is_not_load(fresh):
    # a compiled candidate's first call is its compile, run by worker processes: that is this
    # measurement's own work, so it must not mark the timing as taken on a loaded machine
    n = os.cpu_count() or 1
    compile_like = "import multiprocessing as m, time\nt=time.time()\ndef f(_):\n while time.time()-t<1: pass\n" \
                   f"if __name__=='__main__': m.Pool({n}).map(f, range({n}))"

    class Compiled:
        calls = 0

        def __call__(self):
            if self.calls == 0:
                subprocess.run([sys.executable, "-c", compile_like], check=True)
            self.calls += 1
            time.sleep(0.1)

    record = fresh.fastest("k", {"compiled": Compiled(), "eager": lambda: time.sleep(0.1)}, "cpu")
    assert "loaded" not in record
    assert fresh._read_disk() == {"k": record}


@pytest.mark.parametrize("drloc, compiled_s, chosen", [(False, 1.0, True), (True, 1.0, True), (False, 1.9, False)])
def test_precision_step_records_under_the_key_a_run_looks_up(monkeypatch, fresh, drloc, compiled_s, chosen):
    """eager 2 s a step; compiled 1 s is chosen, compiled 1.9 s (1.05x, under COMPILE_MARGIN) is not."""
    from benchmarks import precision_step

    cost = {}

    def timer(fn, device, repeats=1):  # never runs the steps (no compile here): eager is timed first
        return cost.setdefault(fn, compiled_s if cost else 2.0)

    monkeypatch.setattr(choices, "seconds", timer)
    monkeypatch.setattr(choices, "warm_up", lambda fn, device: None)
    retained = []  # the steps are timed with the allocator train.run sets on a CPU
    monkeypatch.setattr(precision_step.hostmem, "retain_freed_memory", lambda: retained.append(len(cost)))
    precision_step.record_compile("vit_tiny", 8, "fp32", drloc=drloc)
    assert retained and retained[0] == 0
    key_fields = {"arch": "vit_tiny", "img_size": 32, "batch": 8, "objective": "drloc" if drloc else "supervised"}
    got = choices.resolve_compile("auto", torch.device("cpu"), key_fields, "fp32")
    assert got["compile"] is chosen and f"eager 2000 ms, compiled {compiled_s * 1e3:.0f} ms" in got["how"]


def test_a_pretraining_run_reads_the_dino_record_precision_step_makes(monkeypatch, fresh, fmnist_dir, cache_dir,
                                                                         tmp_path):
    """`precision_step --record --dino` measures the pretraining step and stores it where `fastvit pretrain`
    looks: a real CLI run finds it (here eager wins, so the run does not spend a compile on it)."""
    from benchmarks import precision_step
    from tests.test_train import run_cli

    cost = {}
    monkeypatch.setattr(choices, "seconds", lambda fn, device, repeats=1: cost.setdefault(fn, 3.0 if cost else 2.0))
    monkeypatch.setattr(choices, "warm_up", lambda fn, device: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the key holds the thread count; run_cli runs with OMP_NUM_THREADS=1
    try:
        record = precision_step.record_compile("vit_tiny", 16, "fp32", dino=True)
    finally:
        torch.set_num_threads(threads)
    assert record["choice"] == "eager"
    monkeypatch.setenv("FASTVIT_CACHE", str(fresh.cache_path().parent))
    out = tmp_path / "pre"
    r = run_cli("pretrain", "--arch", "vit_tiny", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir,
                "--cache-dir", cache_dir, "--img-size", "32", "--batch-size", "16", "--precision", "fp32",
                "--epochs", "1", "--subset", "32", "--knn-every", "0", "--out", out)
    assert r.returncode == 0, r.stderr
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["compile"] is False
    how = resolved["compile_how"]
    assert how.startswith("auto: cached measurement (") and "eager 2000 ms" in how and "compiled 3000 ms" in how
    # another recipe's step (fewer local views) is another key: not measured, so not compiled either
    got = choices.resolve_compile("auto", torch.device("cpu"), train.speed_key_fields(
        build({"arch": "vit_tiny", "batch_size": 16, "n_local": 2}, command="pretrain"), 32), "fp32")
    assert got["how"].startswith("auto: no cached measurement")
