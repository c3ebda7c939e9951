"""Speed choices made by measuring on this machine (attention backend, precision, compile), cached on disk.

A choice is keyed by what decides it (the machine: CPU model and ISA flags or GPU name and capability;
library versions; the shapes and settings involved), measured once, and stored in
$FASTVIT_CACHE/choices.json (default ~/.cache/fastvit/choices.json) with the times behind it. Later runs
on the same machine and versions reuse it without measuring. Delete the file to measure again.
A measurement taken while other processes (or the hypervisor, as steal time) used more than LOADED_SHARE of
the CPUs is used by the run that took it but not written to disk: a loaded machine's timings would
otherwise decide every later run (measured: a cached bf16 choice from a loaded run, 945 vs 2643 ms).

Measurement is timing, so it is noise: `--deterministic` runs (torch.are_deterministic_algorithms_enabled)
never measure; they take each caller's documented fixed fallback, and that is what gets recorded.
"""

import copy
import functools
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

CACHE_FILE = "choices.json"
# the CPU flags GEMM speed follows (bf16 runs ~10x apart between AMX, AVX512-BF16 and AVX2-only CPUs)
ISA_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "fma", "bf16", "asimd")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # a bf16 dot-product instruction (x86 AMX / AVX-512, ARM)
BF16_MARGIN = 1.1  # bf16 costs accuracy headroom: on a CPU it must be this much faster than fp32 to be chosen
# a compiled CPU step must beat eager by this much: per-step records overstate what a run gains (swin fp32,
# 1.09x a step, ran 0.95x end to end; NOTES 2026-12-03, session 10)
COMPILE_MARGIN = 1.1
LOADED_SHARE = 0.25  # others' share of all CPUs during a measurement above which it is not cached
PROBE_BATCH = 64  # the precision measurement's batch (at most): a few steps must stay a few seconds


def cache_path() -> Path:
    return Path(os.environ.get("FASTVIT_CACHE") or Path.home() / ".cache" / "fastvit") / CACHE_FILE


def may_measure() -> bool:
    """False in deterministic runs (timing noise would make the choice, and so the run, vary)."""
    return not torch.are_deterministic_algorithms_enabled()


@functools.cache
def _cpu_info() -> tuple[str, frozenset]:
    """(CPU model name, its ISA flags) from /proc/cpuinfo where there is one."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name":
                model = value.strip()
            elif name.strip() in ("flags", "Features"):
                flags = set(value.split())
            if model and flags:
                break
    except OSError:  # not Linux: the platform string is what we have
        pass
    return model, frozenset(flags)


def _cpu_name() -> str:
    model, flags = _cpu_info()
    isa = [f for f in ISA_FLAGS if f in flags]
    return f"{model} [{' '.join(isa)}] x{torch.get_num_threads()} threads"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine(device: torch.device | str) -> dict:
    """The device and library versions a measured choice holds for."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = f"{torch.cuda.get_device_name(index)} sm{''.join(map(str, torch.cuda.get_device_capability(index)))}"
    elif device.type == "cpu":
        name = _cpu_name()
    else:
        name = device.type
    return {"device": name, "torch": torch.__version__, "triton": _version("triton"),
            "xformers": _version("xformers")}


def make_key(kind: str, device, **fields) -> str:
    """One string per (kind, machine, fields): the cache's key."""
    return json.dumps({"kind": kind, **machine(device), **fields}, sort_keys=True, default=str)


_memory: dict[str, dict] = {}  # this process's choices, disk cache loaded lazily


def _read_disk() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):  # absent or torn by a crash: measure again
        return {}
    return data if isinstance(data, dict) else {}


def lookup(key: str) -> dict | None:
    """The cached record {"choice": name, "seconds": {...}} for key, or None. Memory first, then disk."""
    if key not in _memory:
        record = _read_disk().get(key)
        if record is None:
            return None
        _memory[key] = record
    return _memory[key]


def store(key: str, record: dict) -> None:
    """Remember record in memory and on disk (merged with what other processes wrote; atomic replace)."""
    _memory[key] = record
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_disk()
        data[key] = record
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError:  # a read-only home still runs; the choice then lives for this process only
        pass


def proc_stat_cpu(path: str = "/proc/stat") -> list[int] | None:
    """The machine's CPU ticks since boot: user nice system idle iowait irq softirq steal (guest time, after
    them, is inside user already), or None where the file or the steal field is missing."""
    try:
        fields = [int(v) for v in Path(path).read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return fields if len(fields) == 8 else None


def cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds all processes have used since boot, steal time included; this process's own), or None
    where there is no /proc/stat."""
    fields = proc_stat_cpu()
    if fields is None:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    own = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own.ru_utime + own.ru_stime


def others_share(before, after, wall: float, n_cpus: int) -> float | None:
    """Share of all CPUs that other processes used between two cpu_seconds() readings `wall` seconds apart;
    None where unknown or the interval is too short to tell (CPU times tick at 10 ms)."""
    if before is None or after is None or wall < 0.2:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return min(max(others / (wall * n_cpus), 0.0), 1.0)


def _sync(device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(fn, device) -> None:
    """One untimed call (allocations, autotuning, a compile), device synchronized."""
    fn()
    _sync(device)


def seconds(fn, device, repeats: int = 3) -> float:
    """Median wall time of fn() over `repeats` calls (device synchronized); warm it up first."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fastest(key: str, candidates: dict, device, timer=None, baseline: str | None = None,
            margin: float = 1.0, rounds: int = 4) -> dict:
    """Time each candidate (name -> zero-argument callable), cache and return the record of the fastest.

    A candidate that raises RuntimeError (e.g. a kernel that refuses these inputs at run time) is left
    out with its message. With a baseline, another candidate wins only if `margin` times faster.
    Every candidate runs once before any is timed, and the machine's load is read over the timing only:
    a compiled candidate's warm-up is its compile, whose worker processes would count as other load.
    The candidates are timed in `rounds` interleaved rounds, the order reversed every round (a b, b a,
    ...), and each gets the median of its rounds: a machine whose speed drifts (a VM losing a third of
    its CPU to its neighbours within minutes) then slows every candidate alike, where timing one
    candidate after the other hands the drift to whichever runs last.
    timer(fn, device) -> seconds of one timed sample; default one call (tests pass a fake one).
    """
    timer = timer or functools.partial(seconds, repeats=1)
    failed = {}

    def refused(name, e: RuntimeError) -> None:
        failed[name] = str(e).splitlines()[0][:200] if str(e) else type(e).__name__

    warm = {}
    for name, fn in candidates.items():
        try:
            warm_up(fn, device)
            warm[name] = fn
        except RuntimeError as e:
            refused(name, e)
    samples = {name: [] for name in warm}
    before, start = cpu_seconds(), time.perf_counter()
    for r in range(rounds):
        for name in list(samples)[::-1 if r % 2 else 1]:
            try:
                samples[name].append(timer(warm[name], device))
            except RuntimeError as e:
                refused(name, e)
                del samples[name]
    times = {name: statistics.median(s) for name, s in samples.items()}
    if not times:
        raise RuntimeError(f"every candidate failed: {failed}")
    choice = min(times, key=times.get)
    if baseline in times and times[choice] * margin > times[baseline]:
        choice = baseline
    record = {"choice": choice, "seconds": {k: round(v, 6) for k, v in times.items()}, "measured": True}
    if failed:
        record["failed"] = failed
    loaded = others_share(before, cpu_seconds(), time.perf_counter() - start, os.cpu_count() or 1)
    if loaded is not None and loaded > LOADED_SHARE:
        record["loaded"] = round(loaded, 2)
        _memory[key] = record  # this process uses it; later runs measure again
    else:
        store(key, record)
    return record


def how_measured(record: dict) -> str:
    """How a fresh record came about, for the run's log: measured, and whether it was cached."""
    if "loaded" in record:
        return f"measured while other processes used {record['loaded']:.0%} of the CPUs, so not cached"
    return "measured"


# ----------------------------------------------------------------------------------------------
# precision and compile of a training step


def cpu_has_bf16() -> bool:
    return any(f in _cpu_info()[1] for f in BF16_CPU_FLAGS)


def resolve_precision(requested: str, device: torch.device, step_fn, key_fields: dict, timer=None) -> dict:
    """{"precision", "how"} for the run. auto: CUDA bf16 from sm80, else fp16 (with loss scaling); a CPU
    with a bf16 dot-product instruction: bf16 if a few fwd+bwd steps of the model (step_fn(precision)
    gives a zero-argument callable running one on a copy: `training_step`) measure it BF16_MARGIN faster
    than fp32, else fp32; other CPUs fp32 unmeasured (an
    AVX2-only EPYC ran bf16 steps 13x slower). Deterministic runs: fp32 on a CPU, unmeasured."""
    if requested != "auto":
        return {"precision": requested, "how": "requested"}
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return {"precision": "bf16", "how": "auto: CUDA with bf16 (sm80+)"}
        return {"precision": "fp16", "how": "auto: CUDA below sm80 (fp16 with loss scaling)"}
    if device.type != "cpu":
        return {"precision": "fp32", "how": f"auto: {device.type} (not measured)"}
    if not cpu_has_bf16():
        return {"precision": "fp32", "how": "auto: this CPU has no bf16 dot-product instructions (not measured)"}
    if not may_measure():
        return {"precision": "fp32", "how": "auto: deterministic run (not measured)"}
    key = make_key("precision", device, **key_fields)
    record = lookup(key)
    how = "auto: cached measurement"
    if record is None:
        with torch.random.fork_rng(devices=[]):  # the copy's drop path draws: keep the run's stream
            record = fastest(key, {p: step_fn(p) for p in ("fp32", "bf16")}, device, timer,
                             baseline="fp32", margin=BF16_MARGIN, rounds=2)  # fp32 bf16 bf16 fp32
        how = f"auto: {how_measured(record)}"
    times = ", ".join(f"{p} {t * 1e3:.0f} ms" for p, t in record["seconds"].items())
    return {"precision": record["choice"], "how": f"{how} ({times} per fwd+bwd at batch {key_fields['batch']})"}


def training_step(module, example, precision: str):
    """One fwd+bwd of a deep copy of module (its loss: module(*example())[0] or the tensor it returns)
    under `precision`: what resolve_precision times. Returns a zero-argument callable."""
    copied = copy.deepcopy(module)
    device = next(copied.parameters()).device
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    inputs = example()

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = copied(*inputs)
        loss = out[0] if isinstance(out, tuple) else out
        loss.float().backward()
        copied.zero_grad(set_to_none=True)

    return step


def compile_key(device, key_fields: dict, precision: str) -> str:
    return make_key("compile", device, precision=precision, **key_fields)


def resolve_compile(requested, device: torch.device, key_fields: dict, precision: str) -> dict:
    """{"compile", "how"}. auto: on CUDA; on a CPU only where a cached measurement (written by
    `python -m benchmarks.precision_step --record`) says the compiled step is faster. A CPU run does not
    measure it itself: that needs a compile (minutes on a small CPU) and paid nothing where it was
    measured (fp32 vit, AVX2 EPYC: 55.3 vs 54.7 img/s)."""
    if requested != "auto":
        return {"compile": bool(requested), "how": "requested"}
    if device.type == "cuda":
        return {"compile": True, "how": "auto: CUDA"}
    record = lookup(compile_key(device, key_fields, precision))
    if record is None:
        return {"compile": False, "how": "auto: no cached measurement for this step (benchmarks/precision_step.py "
                                         "--record makes one)"}
    times = ", ".join(f"{k} {t * 1e3:.0f} ms" for k, t in record["seconds"].items())
    return {"compile": record["choice"] == "compiled", "how": f"auto: cached measurement ({times})"}
