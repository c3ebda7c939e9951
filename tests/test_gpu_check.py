"""benchmarks.gpu_check: the CPU smoke mode of the prepared GPU check runs end to end (so the GPU command
cannot rot), and its sections record errors and budget overruns instead of stopping."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import gpu_bundle, gpu_check

ROOT = Path(__file__).resolve().parents[1]


def test_a_failing_item_is_recorded_and_the_section_goes_on():
    section = gpu_check.Section("demo", budget_s=60, results=[])
    section.run("broken", lambda: 1 / 0)
    section.run("fine", lambda: {"value": 3})
    assert section.results[0]["error"] == "ZeroDivisionError: division by zero"
    assert section.results[1]["value"] == 3 and "error" not in section.results[1]


def test_section_budget_cuts_a_long_item_and_skips_the_rest():
    section = gpu_check.Section("demo", budget_s=1.5, results=[])
    t0 = time.perf_counter()
    section.run("sleeps", lambda: time.sleep(30) or {})
    section.run("after", lambda: {"value": 1})
    assert time.perf_counter() - t0 < 10
    assert section.results[0]["skipped"].startswith("cut at the section budget")
    assert section.results[1]["skipped"].startswith("section budget of 2 s spent")


def test_smoke_mode_runs_every_section_from_the_bundle_as_on_the_gpu_machine(tmp_path):
    """benchmarks/gpu_run.sh as the GPU machine runs it (no fastvit or ffcv installed there, no OpenCV):
    every section runs, fastvit and ffcv import from the carried wheels, OpenCV / turbojpeg map from the
    bundle, and the JSON and the printed table hold the figures."""
    bundle = tmp_path / "bundle"
    manifest = gpu_bundle.build(bundle, f"{sys.version_info.major}.{sys.version_info.minor}")
    files = set(manifest["files"])
    for prefix in ("wheels/fastvit-", "wheels/ffcv-1.0.2-", "lib/libopencv_core.so", "lib/libturbojpeg.so"):
        assert any(f.startswith(prefix) for f in files), prefix
    assert not any(gpu_bundle.SYSTEM_LIBRARIES.match(f.removeprefix("lib/")) for f in files)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_BUNDLE": str(bundle), "OUT": str(out)}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_run.sh"), "--smoke"],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "smoke" and report["ok"] is True and report["complete"] is True
    sections = report["sections"]
    assert set(sections) == {"correctness", "attention", "end_to_end", "pretrain"}  # smoke: all four
    labels = {e["item"] for e in sections["correctness"]}
    assert {"attention swin window bias fp32", "attention per-head scale fp16",
            "drloc_pairs pair sum (2, 3, 4, 8, 12) fp32"} <= labels
    assert all(e["ok"] and e["worst_rel_err"] < e["limit"] for e in sections["correctness"])
    timed = {e["item"]: e for e in sections["attention"]}
    assert timed["swin window bias (tiny) fastvit-triton"]["fwd_bwd_ms"] > 0
    assert timed["vit d16 (tiny) sdpa-math"]["fwd_bwd_ms"] > 0
    assert "not available on cpu" in timed["vit d16 (tiny) flex"]["skipped"]
    e2e = {e["item"]: e for e in sections["end_to_end"]}
    assert e2e["reference vit gani22-finetune"]["images_per_s"] > 0
    assert e2e["fastvit vit_tiny gani22-finetune"]["ratio_vs_reference"] > 0
    own = e2e["fastvit vit_tiny gani22-finetune"]
    assert own["resolved"]["precision"] in ("fp32", "bf16") and own["resolved"]["attention"]  # what auto chose
    assert own["resolved"]["compile"] is False and own["cudagraph_skips"] == 0 and own["compiled_graphs"] == 0
    pre = {e["item"]: e for e in sections["pretrain"]}
    assert pre["reference vit gani22-pretrain"]["images_per_s"] > 0
    assert pre["fastvit vit_tiny gani22-pretrain"]["ratio_vs_reference"] > 0
    assert "| correctness | attention vit d16 fp32 | ok" in result.stdout  # the printed table
    assert "smoke mode on" in (out / "gpu_check.log").read_text()
    imported = report["imported"]
    site = Path(imported["fastvit"]).parents[1]
    assert not site.is_relative_to(ROOT)
    assert Path(imported["fastvit.kernels"]).is_relative_to(site) and Path(imported["ffcv"]).is_relative_to(site)
    assert len(imported["libraries"]) == 2
    assert all(Path(p).parent == bundle / "lib" for p in imported["libraries"])


def test_a_run_cut_short_leaves_the_items_it_finished(tmp_path, monkeypatch):
    calls = []

    def check(case, precision, device):
        calls.append(case.label)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what a kill looks like to the loop: not an Exception, nothing catches it
        return {"worst_rel_err": 1e-7, "limit": 2e-5, "ok": True}

    monkeypatch.setattr(gpu_check, "check_attention", check)
    path = tmp_path / "check.json"
    with pytest.raises(KeyboardInterrupt):
        gpu_check.main(["--smoke", "--sections", "correctness", "--json", str(path)])
    report = json.loads(path.read_text())
    assert report["complete"] is False
    finished = [e["item"] for e in report["sections"]["correctness"]]
    assert finished == ["attention vit d16 fp32", "attention vit d16 fp16"]


def test_the_bundle_builder_leaves_a_folder_that_is_not_a_bundle_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="holds no MANIFEST.json: not a bundle"):
        gpu_bundle.build(tmp_path, f"{sys.version_info.major}.{sys.version_info.minor}")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_unknown_section_is_refused_before_anything_runs(tmp_path, capsys):
    path = tmp_path / "check.json"
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--smoke", "--sections", "correctness,pretrian", "--json", str(path)])
    assert exit_info.value.code == 2
    assert "unknown section(s) pretrian; choose from correctness, attention, end_to_end, pretrain" in \
        capsys.readouterr().err
    assert not path.exists()
