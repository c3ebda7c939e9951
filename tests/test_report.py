"""benchmarks.report: each target's goal follows the CPU family the benchmark JSON was measured on."""

import json

import pytest

from benchmarks import report


def bench_json(tmp_path, flags):
    rows = [("train_vit", 2.0), ("pretrain_vit", 3.1), ("drloc_overhead_swin", 0.95), ("ffcv_loader_alone", 0.2)]
    data = {"machine_info": {"cpu": {"brand_raw": "test CPU", "count": 2, "flags": flags}},
            "benchmarks": [{"name": f"test_{name}", "extra_info": {"target": name, "images_per_s": 10 * ratio,
                                                                   "baseline": "ref", "baseline_images_per_s": 10.0,
                                                                   "ratio": ratio}} for name, ratio in rows]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("flags, family, e2e_goal", [
    (["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"], "amx", "3.00"),
    (["avx2", "fma"], "avx2", "1.80"),
    (["avx2", "avx512f", "avx512_bf16"], "other", "na"),
])
def test_goals_follow_the_cpu_family(tmp_path, capsys, flags, family, e2e_goal):
    report.main([bench_json(tmp_path, flags)])
    out = capsys.readouterr().out
    assert f"CPU family: {family}" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("target=")}
    met = {"3.00": "false", "1.80": "true", "na": "na"}[e2e_goal]
    assert lines["target=train_vit"].endswith(f"ratio=2.00 mfu=na goal={e2e_goal} met={met}")
    met = {"3.00": "true", "1.80": "true", "na": "na"}[e2e_goal]
    assert lines["target=pretrain_vit"].endswith(f"goal={e2e_goal} met={met}")
    assert lines["target=drloc_overhead_swin"].endswith("goal=0.97 met=false")  # every family
    assert lines["target=ffcv_loader_alone"].endswith("goal=na met=na")  # information only
