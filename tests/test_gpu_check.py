"""benchmarks.gpu_check: the CPU smoke mode of the prepared GPU check runs end to end (so the GPU command
cannot rot), and its sections record errors and budget overruns instead of stopping."""

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_mode_runs_every_section_and_writes_the_json(tmp_path):
    out = tmp_path / "check.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--smoke", "--json", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "smoke" and report["ok"] is True
    sections = report["sections"]
    assert set(sections) == {"correctness", "attention", "end_to_end"}
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
    assert "| correctness | attention vit d16 fp32 | ok" in result.stdout  # the printed table


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
