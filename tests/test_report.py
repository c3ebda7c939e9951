"""benchmarks.report: each target's goal follows the CPU family the benchmark JSON was measured on; rows
measured under hypervisor steal are flagged (benchmarks.steal)."""

import json

import pytest

from benchmarks import report


def bench_json(tmp_path, flags, gemm=None):
    rows = [("train_vit", 2.0), ("pretrain_vit", 3.1), ("drloc_overhead_swin", 0.95), ("ffcv_loader_alone", 0.2)]
    data = {"machine_info": {"cpu": {"brand_raw": "test CPU", "count": 2, "flags": flags}},
            "benchmarks": [{"name": f"test_{name}", "extra_info": {"target": name, "images_per_s": 10 * ratio,
                                                                   "baseline": "ref", "baseline_images_per_s": 10.0,
                                                                   "ratio": ratio}} for name, ratio in rows]}
    if gemm is not None:  # the suite records its GEMM probe on the end-to-end rows
        for bench in data["benchmarks"][:2]:
            bench["extra_info"]["gemm_gflops_by_dtype"] = gemm
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    return str(path)


ZEN5 = {"fp32": 180.3, "bf16": 787.3, "fp16": 1.0}  # this suite's probe on a Zen 5 EPYC (4.4x)
ZEN4 = {"fp32": 172.0, "bf16": 400.0, "fp16": 1.0}  # and on a Zen 4 (2.3x)


@pytest.mark.parametrize("flags, gemm, family, e2e_goal", [
    (["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"], None, "amx", "3.00"),
    (["avx2", "fma"], None, "avx2", "1.80"),
    (["avx2", "avx512f", "avx512_bf16"], None, "bf16-no-amx", "1.80"),  # a JSON without the probe's record
    (["avx2", "avx512f", "avx512_bf16"], ZEN4, "bf16-no-amx; bf16 GEMM 2.3x fp32\n", "1.80"),
    (["avx2", "avx512f", "avx512_bf16"], ZEN5,
     "bf16-no-amx; bf16 GEMM 4.4x fp32 (AMX-class bf16 gain: held to the AMX bar, 3.0x)", "3.00"),
    (["asimd"], None, "other", "na"),
])
def test_goals_follow_the_cpu_family(tmp_path, capsys, flags, gemm, family, e2e_goal):
    report.main([bench_json(tmp_path, flags, gemm)])
    out = capsys.readouterr().out
    assert f"CPU family: {family}" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("target=")}
    met = {"3.00": "false", "1.80": "true", "na": "na"}[e2e_goal]
    assert lines["target=train_vit"].endswith(f"ratio=2.00 mfu=na goal={e2e_goal} met={met} steal=na")
    met = {"3.00": "true", "1.80": "true", "na": "na"}[e2e_goal]
    assert lines["target=pretrain_vit"].endswith(f"goal={e2e_goal} met={met} steal=na")
    assert lines["target=drloc_overhead_swin"].endswith("goal=0.97 met=false steal=na")  # every family
    assert lines["target=ffcv_loader_alone"].endswith("goal=na met=na steal=na")  # information only
    assert "not idle" not in out


def test_rows_measured_under_steal_are_flagged(tmp_path, capsys):
    path = bench_json(tmp_path, ["avx2"])
    data = json.loads(open(path).read())
    data["benchmarks"][0]["extra_info"]["steal"] = 0.312
    data["benchmarks"][1]["extra_info"]["steal"] = 0.01
    open(path, "w").write(json.dumps(data))
    report.main([path])
    out = capsys.readouterr().out
    assert "not idle: the hypervisor took over 5% of the CPU during train_vit; those ratios are weak evidence" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("target=")}
    assert lines["target=train_vit"].endswith("steal=0.312")
    assert lines["target=pretrain_vit"].endswith("steal=0.010")


def test_steal_meter_reads_the_steal_share_between_two_reads_of_proc_stat(tmp_path):
    from benchmarks.steal import StealMeter

    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user: not summed)
    stat.write_text("cpu  100 0 50 800 0 0 0 50 90 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    meter = StealMeter(str(stat))
    stat.write_text("cpu  200 0 100 1500 0 0 0 200 190 0\n")
    assert meter.share() == 0.15  # 150 of 1000 jiffies
    stat.write_text("cpu  1 2 3\n")  # a kernel without the field
    assert meter.share() is None
    assert StealMeter(str(tmp_path / "absent")).share() is None
