"""Print the targets of a pytest-benchmark JSON as one table, then one machine-readable line each.

    python -m benchmarks.report runs/bench.json

A target is a benchmark that names a baseline measured in the same run (extra_info `baseline`,
`ratio`); its name is extra_info `target`, else the test's name. Its goal depends on the CPU family the
JSON was measured on (py-cpuinfo's flags in `machine_info`): issue #12 sets the end-to-end goals for a
CPU with AMX-bf16 (3x) and for an AVX2-only one (1.8x, fp32, whose ceiling is ~2x). A CPU without AMX
that has a bf16 instruction is held to the bar its measured bf16 GEMM gain earns (the rows' `gemm_gflops_by_dtype`,
the suite's 1024^3 probe): at least BF16_GAIN_AMX_CLASS times its fp32 rate is AMX-class (AMX measured 4.0x,
Zen 5 4.4x) and gets the AMX bar; below it (Zen 4 2.3x, an AVX512_BF16 Xeon 0.5x) fp32's ceiling argument
applies and it gets the AVX2 one, as does a JSON that predates the probe's record.
A row's `steal` is the hypervisor's share of the CPU while it ran (StealMeter): above STEAL_WARN the
machine was not idle and its ratio is weak evidence.
"""

import json
import sys

from fastvit.choices import BF16_CPU_FLAGS

END_TO_END = ("train_vit", "train_swin", "pretrain_vit")
FAMILY_GOALS = {"amx": 3.0, "avx2": 1.8, "bf16-no-amx": 1.8}  # ratio >= goal, per CPU family (issue #12, item 9)
GOALS = {"drloc_overhead_swin": 0.97, "drloc_overhead_swin_t224": 0.97}  # on every machine
BF16_GAIN_AMX_CLASS = 3.5  # bf16 / fp32 GEMM rate from which a bf16-no-amx CPU is held to the AMX bar
STEAL_WARN = 0.05


def cpu_family(flags) -> str:
    """'amx' (AMX-bf16), 'avx2' (AVX2 and no bf16 dot-product instruction), 'bf16-no-amx' (a bf16
    instruction, no AMX), else 'other'."""
    flags = set(flags)
    if "amx_bf16" in flags:
        return "amx"
    if flags & set(BF16_CPU_FLAGS):
        return "bf16-no-amx"
    if "avx2" in flags:
        return "avx2"
    return "other"


def bf16_gain(data: dict) -> float | None:
    """The highest bf16 / fp32 1024^3 GEMM rate the JSON's rows recorded, None where none did."""
    gains = [rates["bf16"] / rates["fp32"] for bench in data["benchmarks"]
             if (rates := bench.get("extra_info", {}).get("gemm_gflops_by_dtype")) and rates.get("fp32")]
    return max(gains) if gains else None


def goal_family(family: str, gain: float | None) -> str:
    """The family whose end-to-end bar applies: an AMX-class bf16 gain earns the AMX bar."""
    return "amx" if family == "bf16-no-amx" and gain is not None and gain >= BF16_GAIN_AMX_CLASS else family


def goal(name: str, family: str) -> float | None:
    return FAMILY_GOALS.get(family) if name in END_TO_END else GOALS.get(name)


def targets(data: dict, family: str) -> list[dict]:
    rows = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if info.get("ratio") is None or "baseline" not in info:
            continue
        name = info.get("target") or bench["name"].removeprefix("test_")
        rows.append({"target": name, "fastvit": info["images_per_s"], "reference": info["baseline_images_per_s"],
                     "ratio": info["ratio"], "mfu": info.get("mfu"), "precision": info.get("precision", ""),
                     "goal": goal(name, family), "steal": info.get("steal")})
        rows[-1]["met"] = rows[-1]["ratio"] >= rows[-1]["goal"] if rows[-1]["goal"] else None
    return rows


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m benchmarks.report BENCHMARK.json")
    with open(argv[0]) as f:
        data = json.load(f)
    machine = data.get("machine_info", {})
    print(f"machine: {machine.get('cpu', {}).get('brand_raw', '?')}, {machine.get('cpu', {}).get('count', '?')} "
          f"cores, python {machine.get('python_version', '?')}; {data.get('datetime', '')}")
    family = cpu_family(machine.get("cpu", {}).get("flags", []))
    gain = bf16_gain(data)
    bar = goal_family(family, gain)
    gain_s = f"; bf16 GEMM {gain:.1f}x fp32" if gain is not None else ""
    print(f"CPU family: {family}{gain_s}" + (
        " (issue #12 sets end-to-end goals for x86 CPUs only)" if family not in FAMILY_GOALS else
        f" (AMX-class bf16 gain: held to the AMX bar, {FAMILY_GOALS['amx']:.1f}x)" if bar != family else ""))
    rows = targets(data, bar)
    header = (f"{'target':38} {'fastvit img/s':>14} {'reference img/s':>16} {'ratio':>7} {'goal':>6} {'met':>4} "
              f"{'MFU':>6} {'steal':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        goal_s = f"{r['goal']:.2f}" if r["goal"] else "-"
        met = {True: "yes", False: "no", None: "-"}[r["met"]]
        mfu = f"{r['mfu']:.2f}" if r["mfu"] is not None else "-"
        steal = f"{r['steal']:.0%}" if r["steal"] is not None else "-"
        print(f"{r['target']:38} {r['fastvit']:14.1f} {r['reference']:16.1f} {r['ratio']:7.2f} {goal_s:>6} "
              f"{met:>4} {mfu:>6} {steal:>6}")
    stolen = [r["target"] for r in rows if (r["steal"] or 0) > STEAL_WARN]
    if stolen:
        print(f"not idle: the hypervisor took over {STEAL_WARN:.0%} of the CPU during {', '.join(stolen)}; "
              "those ratios are weak evidence")
    print()
    for r in rows:
        mfu = f"{r['mfu']:.2f}" if r["mfu"] is not None else "na"
        goal_s = f"{r['goal']:.2f}" if r["goal"] else "na"
        met = "na" if r["met"] is None else str(r["met"]).lower()
        steal = "na" if r["steal"] is None else f"{r['steal']:.3f}"
        print(f"target={r['target']} fastvit={r['fastvit']:.1f} reference={r['reference']:.1f} "
              f"ratio={r['ratio']:.2f} mfu={mfu} goal={goal_s} met={met} steal={steal}")


if __name__ == "__main__":
    main()
