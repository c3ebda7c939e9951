"""The prepared GPU check: `python -m benchmarks.gpu_check [--json PATH] [--smoke]`.

One command, at most ~8 minutes on one H100/H200, three sections, each with its own time budget (an item
that would start past its section's budget is skipped with a note; a running item is cut by an alarm):
  1. correctness: every kernel against float64 in fp32 (IEEE and TF32), bf16 and fp16 at the models'
     shapes: attention forward + backward without bias, with a windowed bias, with a per-head scale, CaiT's
     one-query class attention; drloc_pairs (concat and pair sum) forward + backward;
  2. attention: forward+backward ms of the own Triton kernel, SDPA's flash / efficient / cuDNN / math
     backends, FlexAttention and xformers (when installed) for ViT (65 tokens, d16), Swin 4x4 windows (16,
     d32, bias), Swin-T 7x7 windows (49, d32, bias) and T2T (197, d64), bf16;
  3. end to end: images/s of `fastvit.train.run` with its auto choices for vit and swin (32 px, batch 256,
     gani22-finetune) and swin_t (224 px, drloc21, batch 64) against the reference pipeline of the same
     recipe (benchmarks/reference_pipeline.py: torch DataLoader + PIL augmentations, paper A's for
     gani22-finetune, paper B's timm pipeline for drloc21, which crops the 32-px images to 224 itself; the
     frozen paper models of benchmarks/reference_models.py in eager fp32, paper B's L_drloc for swin_t);
  4. pretrain (not in the GPU default, which the 8 minutes hold without it: `--sections pretrain`): source
     images/s of `fastvit pretrain` (vit, gani22-pretrain: DINO over 2 + 8 views, compiled with CUDA graphs
     under auto) against paper A's DINO step (PIL multi-crop DataLoader, eager fp32).
Every item runs in try/except: an error is recorded in the JSON and the check goes on.
Output: one JSON file (default runs/gpu_check.json) and one printed table.

Without a GPU (or with --smoke) the same code runs a smoke mode in seconds: tiny shapes, fp32/fp16 through
the Triton interpreter, one timed call per provider, a few training steps; tests/test_gpu_check.py runs it
so the command cannot rot. On the project's lent GPU machine it runs through benchmarks/gpu_run.sh, which
installs what benchmarks/gpu_bundle.py packed (README, "GPU check on a lent machine"). The GPU mode has not
been run yet (no GPU was available when it was written).
"""

import argparse
import contextlib
import importlib
import json
import os
import pickle
import platform
import re
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

SECTION_BUDGET_S = {"correctness": 100, "attention": 160, "end_to_end": 200, "pretrain": 120}
GPU_SECTIONS = ("correctness", "attention", "end_to_end")  # the GPU default: 7.7 min of budgets
SMOKE_BUDGET_S = {"correctness": 120, "attention": 60, "end_to_end": 240, "pretrain": 120}
# Relative error limits against float64 (norm-wise): fp32 IEEE ~1e-7 measured, TF32 has a 10-bit mantissa,
# bf16/fp16 inputs are rounded to 8/11 bits before the kernel sees them.
TOLERANCE = {"fp32": 2e-5, "tf32": 5e-3, "bf16": 3e-2, "fp16": 2e-2}


class OverBudget(Exception):
    pass


@dataclass
class Section:
    """A time budget: `start(label)` refuses an item once the budget is spent, and an alarm cuts one that
    runs past it."""

    name: str
    budget_s: float
    results: list
    notify: object = None  # called with each entry once it is recorded (progress line, JSON rewrite)

    def __post_init__(self):
        self.t0 = time.perf_counter()

    def record(self, entry):
        self.results.append(entry)
        if self.notify is not None:
            self.notify(self.name, entry)
        return entry

    def skip(self, label, why):
        return self.record({"item": label, "skipped": why})

    def left(self):
        return self.budget_s - (time.perf_counter() - self.t0)

    def run(self, label, fn):
        """fn() -> dict of figures; recorded with `label`, or the error / skip note in its place."""
        entry = {"item": label}
        left = self.left()
        if left <= 1:
            return self.skip(label, f"section budget of {self.budget_s:.0f} s spent")
        t0 = time.perf_counter()
        try:
            with _alarm(left):
                entry.update(fn())
        except OverBudget:
            entry["skipped"] = f"cut at the section budget of {self.budget_s:.0f} s"
        except Exception as err:  # record and go on: one failure must not hide the rest of the check
            entry["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            entry["traceback"] = traceback.format_exc(limit=4)[-1500:]
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        return self.record(entry)


@contextlib.contextmanager
def _alarm(seconds):
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def cut(signum, frame):
        raise OverBudget

    previous = signal.signal(signal.SIGALRM, cut)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------------------------
# 1. correctness against float64
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttnCase:
    label: str
    B: int
    H: int
    n_q: int
    n_k: int
    D: int
    nb: int = 0  # windowed bias (nb, H, N, N) with a -100/0 shift mask; 0: none
    per_head_scale: bool = False


def attention_cases(smoke):
    if smoke:
        return [AttnCase("vit d16", 2, 2, 17, 17, 16), AttnCase("swin window bias", 4, 2, 16, 16, 32, nb=2),
                AttnCase("per-head scale", 2, 2, 16, 16, 16, per_head_scale=True)]
    return [AttnCase("vit 65 d16", 64, 12, 65, 65, 16), AttnCase("swin 16 d32 bias", 1024, 3, 16, 16, 32, nb=16),
            AttnCase("swin-t 49 d32 bias", 512, 3, 49, 49, 32, nb=64), AttnCase("t2t 197 d64", 32, 8, 197, 197, 64),
            AttnCase("cait cls 1x65 d48", 64, 4, 1, 65, 48, per_head_scale=True),
            AttnCase("cait 65 d48 per-head scale", 64, 4, 65, 65, 48, per_head_scale=True)]


def _rel(a, b):
    b = b.double()
    return ((a.double().cpu() - b.cpu()).norm() / b.norm().clamp_min(1e-300)).item()


def check_attention(case, precision, device):
    """Forward and every gradient of the Triton backend against the float64 reference."""
    import torch

    from fastvit.kernels import attention as attention_fn
    from fastvit.kernels import reference

    attn = importlib.import_module("fastvit.kernels.attention")  # the module; the package exports the function
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(case.B, case.H, n, case.D, generator=g, dtype=torch.float64)
               for n in (case.n_q, case.n_k, case.n_k))
    leaves = {"q": q, "k": k, "v": v}
    mask = None
    if case.nb:
        leaves["bias"] = 0.5 * torch.randn(case.H, case.n_q, case.n_k, generator=g, dtype=torch.float64)
        mask = torch.where(torch.rand(case.nb, 1, case.n_q, case.n_k, generator=g) < 0.3, -100.0, 0.0).double()
        mask[..., 0] = 0.0
    if case.per_head_scale:
        leaves["scale"] = torch.rand(case.H, generator=g, dtype=torch.float64) * 0.5 + 0.05
    dout = torch.randn(case.B, case.H, case.n_q, case.D, generator=g, dtype=torch.float64)

    def run(params, dtype, dev):
        bias = params["bias"] + mask.to(params["bias"]) if case.nb else None
        fn = (lambda *a: attention_fn(*a, backend="triton")) if dtype != torch.float64 else reference.attention
        out = fn(params["q"], params["k"], params["v"], bias, params.get("scale"))
        grads = torch.autograd.grad(out, list(params.values()), dout.to(dev, out.dtype))
        return {"out": out, **{f"d{n}": t for n, t in zip(params, grads, strict=True)}}

    ref = run({n: t.clone().requires_grad_() for n, t in leaves.items()}, torch.float64, "cpu")
    dtype = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    low = {n: t.to(device, dtype if n in "qkv" else torch.float32).requires_grad_() for n, t in leaves.items()}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"  # the Triton backend's dot_precision reads it
    try:
        got = run(low, dtype, device)
        used = attn.dot_precision(dtype, torch.device(device).type)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    errors = {name: _rel(got[name], ref[name]) for name in ref}
    worst = max(errors.values())
    return {"dot_precision": used, "worst_rel_err": worst, "limit": TOLERANCE[precision],
            "ok": worst < TOLERANCE[precision], "errors": {n: f"{e:.1e}" for n, e in errors.items()}}


def check_drloc_pairs(shape, sum_halves, precision, device):
    import torch

    from fastvit.kernels import reference
    from fastvit.kernels.drloc_pairs import drloc_pair_sum, drloc_pairs

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    B, Hg, Wg, C, m = shape
    g = torch.Generator().manual_seed(1)
    grid64 = torch.randn(B, Hg, Wg, C, generator=g, dtype=torch.float64)
    grid = grid64.to(device, dtype).requires_grad_()
    fn = drloc_pair_sum if sum_halves else drloc_pairs
    out, targets, positions = fn(grid, m, seed=3, offset=5, backend="triton")
    weight = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (out.float() * weight.to(device, torch.float32)).sum().backward()
    ref_grid = grid.detach().double().cpu().requires_grad_()  # the rounded input: only the kernel's error
    ref_fn = reference.drloc_pair_sum if sum_halves else reference.drloc_pairs
    ref_out, ref_targets = ref_fn(ref_grid, positions.cpu())
    (ref_out.double() * weight).sum().backward()
    errors = {"out": _rel(out, ref_out), "dgrid": _rel(grid.grad, ref_grid.grad)}
    worst = max(errors.values())
    return {"worst_rel_err": worst, "limit": TOLERANCE[precision], "targets_equal": bool(torch.equal(
        targets.cpu(), ref_targets)), "ok": worst < TOLERANCE[precision] and torch.equal(targets.cpu(), ref_targets),
            "errors": {n: f"{e:.1e}" for n, e in errors.items()}}


def correctness(section, device, smoke):
    """Pinned launch configs (set_deterministic): one compile per kernel variant instead of an autotuning
    sweep per shape, which would eat the section's budget; the timing section autotunes."""
    attn = importlib.import_module("fastvit.kernels.attention")
    attn.set_deterministic(True)
    try:
        _correctness(section, device, smoke)
    finally:
        attn.set_deterministic(False)


def _correctness(section, device, smoke):
    precisions = ("fp32", "fp16") if smoke else ("fp32", "tf32", "bf16", "fp16")
    for case in attention_cases(smoke):
        for precision in precisions:
            label = f"attention {case.label} {precision}"
            section.run(label, lambda c=case, p=precision: check_attention(c, p, device))
    shapes = [(2, 3, 4, 8, 12)] if smoke else [(256, 8, 8, 192, 64), (64, 7, 7, 768, 64)]  # vit/swin, swin-t
    for shape in shapes:
        for sum_halves in (False, True):
            for precision in ("fp32", "fp16") if smoke else ("fp32", "bf16", "fp16"):
                label = f"drloc_pairs {'pair sum' if sum_halves else 'concat'} {shape} {precision}"
                section.run(label, lambda s=shape, h=sum_halves, p=precision: check_drloc_pairs(s, h, p, device))


# --------------------------------------------------------------------------------------------------
# 2. attention providers, forward + backward
# --------------------------------------------------------------------------------------------------
def timing_shapes(smoke):
    from benchmarks.attention import Shape

    if smoke:
        return [Shape("vit d16 (tiny)", B=2, H=2, N=17, D=16), Shape("swin window bias (tiny)", B=4, H=2, N=16, D=32,
                                                                       nb=2)]
    return [Shape("vit 65 d16", B=256, H=12, N=65, D=16), Shape("swin 16 d32 bias", B=256 * 16, H=3, N=16, D=32, nb=16),
            Shape("swin-t 49 d32 bias", B=128 * 64, H=3, N=49, D=32, nb=64),
            Shape("t2t 197 d64", B=128, H=8, N=197, D=64)]


def providers(shape, device):
    """name -> fn(q, k, v, bias) with bias windowed (nb, H, N, N) or None."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from fastvit.kernels import attention

    def dense(bias, B):  # (nb, H, N, N) -> (B, H, N, N), what SDPA's fused kernels take
        return None if bias is None else bias.expand(B // bias.shape[0], *bias.shape).flatten(0, 1)

    def sdpa(backend):
        def run(q, k, v, bias):
            with sdpa_kernel(backend):
                mask = dense(bias, q.shape[0])
                return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype))
        return run

    found = {"fastvit-triton": lambda q, k, v, bias: attention(q, k, v, bias, backend="triton")}
    if device == "cuda":
        found["sdpa-flash"] = sdpa(SDPBackend.FLASH_ATTENTION)
        found["sdpa-efficient"] = sdpa(SDPBackend.EFFICIENT_ATTENTION)
        if hasattr(SDPBackend, "CUDNN_ATTENTION"):
            found["sdpa-cudnn"] = sdpa(SDPBackend.CUDNN_ATTENTION)
    found["sdpa-math"] = sdpa(SDPBackend.MATH)
    # FlexAttention has no CPU backward (torch 2.13): GPU only
    found["flex"] = _flex_provider(shape, device) if device == "cuda" else None
    with contextlib.suppress(ImportError):
        import xformers.ops  # noqa: F401

        found["xformers"] = lambda q, k, v, bias: attention(q, k, v, bias, backend="xformers")
    return found


def _flex_provider(shape, device):
    """FlexAttention (compiled once per shape) with the windowed bias read in score_mod."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention, dynamic=False) if device == "cuda" else flex_attention

    def run(q, k, v, bias):
        if bias is None:
            return compiled(q, k, v)
        nb = bias.shape[0]

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[b % nb, h, q_idx, kv_idx]

        return compiled(q, k, v, score_mod=score_mod)
    return run


def time_fwd_bwd(fn, shape, device, dtype, smoke):
    import torch

    from benchmarks.attention import make_inputs

    q, k, v, table, mask = make_inputs(shape, device, dtype)
    dout = torch.randn_like(q)
    leaves = [t for t in (q, k, v, table) if t is not None]

    def step():
        bias = (table + mask).expand(shape.nb, shape.H, shape.N, shape.N).contiguous() if table is not None else None
        fn(q, k, v, bias).backward(dout)

    step()  # compile / autotune outside the timed region
    if smoke:
        t0 = time.perf_counter()
        step()
        return {"fwd_bwd_ms": round((time.perf_counter() - t0) * 1e3, 3), "timer": "one call, perf_counter"}
    from triton.testing import do_bench

    ms = do_bench(step, grad_to_none=leaves, return_mode="median")
    return {"fwd_bwd_ms": round(ms, 4), "fwd_bwd_tflops": round(shape.flops(True) / ms / 1e9, 1),
            "timer": "triton.testing.do_bench median"}


def attention_timing(section, device, smoke):
    import torch

    dtype = torch.float32 if smoke else torch.bfloat16
    for shape in timing_shapes(smoke):
        for name, fn in providers(shape, device).items():
            if fn is None:
                section.skip(f"{shape.label} {name}", f"not available on {device}")
                continue
            section.run(f"{shape.label} {name}", lambda f=fn, s=shape: time_fwd_bwd(f, s, device, dtype, smoke))


# --------------------------------------------------------------------------------------------------
# 3. end to end: fastvit.train.run (auto) against the reference pipeline
# --------------------------------------------------------------------------------------------------
def write_cifar_files(root, images, labels):
    """`cifar-10-batches-py/` in the real pickle format from uint8 (N, 32, 32, 3) images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # (N, 3072): R, G, B planes
    for i, idx in enumerate(_split(len(images), 5), start=1):
        batch = {"data": planes[idx], "labels": labels[idx].tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {"data": planes[: len(images) // 4], "labels": labels[: len(images) // 4].tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}, protocol=2))
    return root


def _split(n, parts):
    import numpy as np

    return np.array_split(np.arange(n), parts)


PRETRAIN_RECIPE = "gani22-pretrain"


def fastvit_rate(root, arch, recipe, batch, images, img_size=None, epochs=2, **extra):
    """images/s of the last epoch of `fastvit.train.run` with the config's auto choices (`fastvit pretrain`
    for PRETRAIN_RECIPE, without its k-NN monitor: source images/s), what auto chose (config.json's
    "resolved") and how often inductor fell back from CUDA graphs or compiled a graph during the run."""
    from torch._dynamo.utils import counters

    from fastvit import config, train

    values = dict(arch=arch, dataset="cifar10", data_dir=str(root / "src"), cache_dir=str(root / "cache"),
                  epochs=epochs, subset=images, batch_size=batch, out=str(root / f"run-{arch}-{recipe}"),
                  log_every=10_000, warmup_epochs=1.0, **extra)
    if img_size:
        values["img_size"] = img_size
    command = "pretrain" if recipe == PRETRAIN_RECIPE else "train"
    if command == "pretrain":
        values.update(knn_every=0)
        values.pop("augment", None)  # pretraining's augmentation is the multi-crop
    skips, graphs = counters["inductor"]["cudagraph_skips"], counters["stats"]["unique_graphs"]
    metrics = train.run(config.build(values, recipe=recipe, command=command))
    resolved = json.loads((Path(values["out"]) / "config.json").read_text())["resolved"]
    return {"images_per_s": round(metrics["images_per_s"], 1), "batch": batch, "images": images,
            "resolved": {k: resolved[k] for k in ("precision", "tf32", "compile", "cuda_graphs", "attention")},
            "cudagraph_skips": counters["inductor"]["cudagraph_skips"] - skips,
            "compiled_graphs": counters["stats"]["unique_graphs"] - graphs}


def reference_rate(arch, images, labels, batch, steps, device, num_workers, drloc=False, pipeline="gani22-finetune"):
    """images/s of the papers' pipeline (benchmarks/reference_train: DataLoader + PIL augmentations of
    `pipeline`, the frozen paper model in eager fp32, paper B's L_drloc where drloc; for PRETRAIN_RECIPE
    paper A's DINO step on its multi-crop views)."""
    from benchmarks.reference_train import pretrain_step, supervised_step

    if pipeline == PRETRAIN_RECIPE:
        step, _ = pretrain_step(images, labels, batch=batch, device=device, num_workers=num_workers)
    else:
        step, _ = supervised_step(arch, images, labels, batch=batch, device=device, num_workers=num_workers,
                                  drloc=drloc, pipeline=pipeline)
    step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return {"images_per_s": round(steps * batch / (time.perf_counter() - t0), 1), "batch": batch}


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def end_to_end(section, device, smoke):
    # (fastvit arch, the paper model it is timed against, recipe, batch, image size, epochs)
    if smoke:  # a tiny arch against paper A's vit, two steps each side, no augmentation: the code path, not the figure
        settings = [("vit_tiny", "vit", "gani22-finetune", 32, None, 1)]
    else:
        settings = [("vit", "vit", "gani22-finetune", 256, None, 2), ("swin", "swin", "gani22-finetune", 256, None, 2),
                    ("swin_t", "swin_t", "drloc21", 64, 224, 2)]
    versus_reference(section, device, smoke, settings)


def pretrain(section, device, smoke):
    settings = [("vit_tiny", "vit", PRETRAIN_RECIPE, 16, None, 1)] if smoke else [
        ("vit", "vit", PRETRAIN_RECIPE, 256, None, 2)]
    versus_reference(section, device, smoke, settings)


def versus_reference(section, device, smoke, settings):
    import numpy as np

    rng = np.random.default_rng(0)
    n = 256 if smoke else 10_240
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    root = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    write_cifar_files(root / "src", images, labels)
    extra = {}
    if smoke:
        ref_workers, ref_steps = 0, 1
        extra = {"augment": "none", "repeats": 1}
    else:
        ref_workers, ref_steps = min(8, os.cpu_count() or 1), 8
    images_per_run = (lambda b: 2 * b) if smoke else (lambda b: min(n, 8 * b))
    for arch, ref_arch, recipe, batch, img_size, epochs in settings:
        # both sides get the 32-px images: the reference pipeline named after the recipe brings them to the
        # model's size as the paper's code does (drloc21: timm's RandomResizedCrop to 224, no upsampling first)
        def reference_run(a=ref_arch, b=batch, r=recipe):
            return reference_rate(a, images, labels, b, ref_steps, device, ref_workers, drloc=r == "drloc21",
                                  pipeline=r)

        ref = section.run(f"reference {ref_arch} {recipe}", reference_run)

        def own_run(a=arch, r=recipe, b=batch, s=img_size, e=epochs, ref=ref):
            own = fastvit_rate(root, a, r, b, images_per_run(b), s, e, **extra)
            if "images_per_s" in ref:
                own["ratio_vs_reference"] = round(own["images_per_s"] / ref["images_per_s"], 2)
            return own

        section.run(f"fastvit {arch} {recipe}", own_run)


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
def _result(e):
    if "skipped" in e:
        return f"skipped: {e['skipped']}"
    if "error" in e:
        return f"ERROR {e['error'][:80]}"
    if "worst_rel_err" in e:
        return f"{'ok' if e['ok'] else 'FAIL'} {e['worst_rel_err']:.1e} (< {e['limit']:.0e})"
    if "fwd_bwd_ms" in e:
        return f"{e['fwd_bwd_ms']} ms fwd+bwd"
    text = f"{e.get('images_per_s')} img/s" + (f", {e['ratio_vs_reference']}x reference"
                                                 if "ratio_vs_reference" in e else "")
    if "resolved" in e:
        r = e["resolved"]
        graphs = "CUDA graphs" if r["cuda_graphs"] else "compiled" if r["compile"] else "eager"
        text += f"; {r['precision']}, {graphs}, {e['cudagraph_skips']} CUDA-graph skips"
    return text


def _row(section, e):
    return f"| {section} | {e['item']} | {_result(e)} | {e.get('seconds', '')} |"


def table(report):
    rows = ["| section | item | result | s |", "|---|---|---|---|"]
    rows += [_row(name, e) for name, entries in report["sections"].items() for e in entries]
    return "\n".join(rows)


def _ok(report):
    return all(e.get("ok", True) and "error" not in e for entries in report["sections"].values() for e in entries)


def _save(report, path):
    """Rewritten after every item (atomically), so a run killed at its time limit still leaves its figures."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)


def provenance():
    """Where fastvit and ffcv were imported from and which OpenCV / turbojpeg files are mapped: on the GPU
    machine, the bundle's (benchmarks/gpu_bundle.py)."""
    found = {name: getattr(sys.modules.get(name), "__file__", None) for name in ("fastvit", "fastvit.kernels", "ffcv")}
    with contextlib.suppress(OSError):
        maps = Path("/proc/self/maps").read_text().split()
        found["libraries"] = sorted({p for p in maps if re.search(r"/lib(opencv_core|turbojpeg)\.so", p)})
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="runs/gpu_check.json", help="where the JSON report goes")
    parser.add_argument("--smoke", action="store_true", help="the tiny CPU mode even where a GPU is present")
    parser.add_argument("--sections", help="comma-separated subset of: correctness, attention, end_to_end, pretrain "
                                           f"(default: {', '.join(GPU_SECTIONS)} on a GPU, all four in smoke mode)")
    args = parser.parse_args(argv)
    cuda = False
    if not args.smoke:
        import torch

        cuda = torch.cuda.is_available()
    smoke = args.smoke or not cuda
    steps = {"correctness": correctness, "attention": attention_timing, "end_to_end": end_to_end, "pretrain": pretrain}
    names = args.sections.split(",") if args.sections else list(steps if smoke else GPU_SECTIONS)
    unknown = [name for name in names if name not in steps]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(steps)}")
    if smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the CPU interpreter
    import torch

    device = "cuda" if cuda and not args.smoke else "cpu"
    budgets = SMOKE_BUDGET_S if smoke else SECTION_BUDGET_S
    report = {"mode": "smoke" if smoke else "gpu", "device": torch.cuda.get_device_name() if device == "cuda" else
              platform.processor() or platform.machine(), "torch": torch.__version__,
              "budgets_s": budgets, "complete": False, "sections": {}}
    with contextlib.suppress(ImportError):
        import triton

        report["triton"] = triton.__version__
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)

    def progress(section, entry):
        print(_row(section, entry), flush=True)
        _save(report, path)

    t0 = time.perf_counter()
    print(f"{report['mode']} mode on {report['device']}, torch {report['torch']}, triton {report.get('triton')}; "
          f"JSON: {path}", flush=True)
    for name in names:
        section = Section(name, budgets[name], [], notify=progress)
        report["sections"][name] = section.results
        try:
            steps[name](section, device, smoke)
        except Exception as err:  # a section's own setup failed: note it, run the next section
            section.record({"item": f"{name} setup", "error": f"{type(err).__name__}: {err}"[:300]})
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["ok"] = _ok(report)
    report["imported"] = provenance()
    report["complete"] = True
    _save(report, path)
    print(table(report))
    print(f"{report['mode']} mode on {report['device']}: {report['seconds']} s, "
          f"{'all ok' if report['ok'] else 'FAILURES or errors above'}; JSON: {path}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
