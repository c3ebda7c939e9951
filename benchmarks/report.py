"""Print the targets of a pytest-benchmark JSON as one table, then one machine-readable line each.

    python -m benchmarks.report runs/bench.json

A target is a benchmark that names a baseline measured in the same run (extra_info `baseline`,
`ratio`); its name is extra_info `target`, else the test's name.
"""

import json
import sys

GOALS = {  # what each target must reach (issue text): ratio >= goal
    "train_vit": 3.0, "train_swin": 3.0, "pretrain_vit": 3.0, "drloc_overhead_swin": 0.97,
    "drloc_overhead_swin_t224": 0.97,
    "fastvit_finetune_resident_batched": 5.0, "fastvit_multicrop_resident_batched": 5.0,
}


def targets(data: dict) -> list[dict]:
    rows = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if info.get("ratio") is None or "baseline" not in info:
            continue
        name = info.get("target") or bench["name"].removeprefix("test_")
        rows.append({"target": name, "fastvit": info["images_per_s"], "reference": info["baseline_images_per_s"],
                     "ratio": info["ratio"], "mfu": info.get("mfu"), "precision": info.get("precision", ""),
                     "goal": GOALS.get(name)})
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
    rows = targets(data)
    header = f"{'target':38} {'fastvit img/s':>14} {'reference img/s':>16} {'ratio':>7} {'goal':>6} {'MFU':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        goal = f"{r['goal']:.2f}" if r["goal"] else "-"
        mfu = f"{r['mfu']:.2f}" if r["mfu"] is not None else "-"
        print(f"{r['target']:38} {r['fastvit']:14.1f} {r['reference']:16.1f} {r['ratio']:7.2f} {goal:>6} {mfu:>6}")
    print()
    for r in rows:
        mfu = f"{r['mfu']:.2f}" if r["mfu"] is not None else "na"
        print(f"target={r['target']} fastvit={r['fastvit']:.1f} reference={r['reference']:.1f} "
              f"ratio={r['ratio']:.2f} mfu={mfu}")


if __name__ == "__main__":
    main()
