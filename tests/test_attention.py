"""fastvit.kernels.attention: the Triton kernel (CPU interpreter), the sdpa/math backends, dispatch, compile.

Every case compares the output and every gradient (q, k, v, bias, per-head scale) against the float64
reference, as norm-wise relative error. Kernel outputs are NaN-poisoned, so an unwritten entry fails.
"""

import importlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from packaging.version import Version

from fastvit.errors import UserError
from fastvit.kernels import reference

# numpy warnings inside the interpreter mean NaN/inf arithmetic or reads of garbage (out-of-bounds) memory
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

attn = importlib.import_module("fastvit.kernels.attention")  # the module; the package exports the function

TOL = {torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 3e-2}
TOL_REDUCTION = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 3e-2}  # whole-tensor sums (dscale)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every buffer a kernel writes starts as NaN; clear FASTVIT_ATTN so dispatch is not forced."""
    def nan_filled(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(attn, "_empty", nan_filled)
    monkeypatch.delenv("FASTVIT_ATTN", raising=False)


def rel_err(actual, expected):
    """||actual - expected|| / ||expected|| (absolute when the expected tensor is zero, e.g. N = 1 grads)."""
    diff = (actual.double() - expected).norm().item()
    ref = expected.norm().item()
    return diff / ref if ref > 0 else diff


def make_case(B, H, n_q, n_k, D, bias_kind, scale_kind, seed):
    """float64 leaves and a builder of (bias, scale) from them. bias_kind:
    None | "heads" (H, N_Q, N_K) | "window" ((H, N, N) learned + (nb, 1, N, N) fixed -100/0 mask, nb = 2)
    | "keys" (B, 1, 1, N_K) | "full" (B, H, N_Q, N_K). scale_kind: None | "float" | "heads" (H,)."""
    g = torch.Generator().manual_seed(seed)
    qkv = [torch.randn(B, H, n, D, generator=g, dtype=torch.float64) for n in (n_q, n_k, n_k)]
    leaves = {}
    if bias_kind == "heads":
        leaves["bias"] = torch.randn(H, n_q, n_k, generator=g, dtype=torch.float64)
    elif bias_kind == "window":
        leaves["bias"] = torch.randn(H, n_q, n_k, generator=g, dtype=torch.float64)
        mask = torch.where(torch.rand(2, 1, n_q, n_k, generator=g) < 0.3, -100.0, 0.0).double()
        mask[..., 0] = 0.0  # keep one key visible per row, as Swin's shift mask does
    elif bias_kind == "keys":
        leaves["bias"] = torch.randn(B, 1, 1, n_k, generator=g, dtype=torch.float64)
    elif bias_kind == "full":
        leaves["bias"] = torch.randn(B, H, n_q, n_k, generator=g, dtype=torch.float64)
    if scale_kind == "heads":
        leaves["scale"] = torch.rand(H, generator=g, dtype=torch.float64) * 0.5 + 0.05

    def build(params):
        bias = params.get("bias")
        if bias_kind == "window":
            bias = bias + mask.to(bias)  # (nb, H, N, N): windowed, batch b reads [b % nb]
        scale = {None: None, "float": 0.37, "heads": params.get("scale")}[scale_kind]
        return bias, scale

    dout = torch.randn(B, H, n_q, D, generator=g, dtype=torch.float64)
    return qkv, leaves, build, dout


def check_against_reference(backend, B, H, n_q, n_k, D, bias_kind=None, scale_kind=None,
                            dtype=torch.float32, seed=0, device="cpu"):
    qkv, leaves, build, dout = make_case(B, H, n_q, n_k, D, bias_kind, scale_kind, seed)
    ref_qkv = [t.clone().requires_grad_() for t in qkv]
    ref_leaves = {name: t.clone().requires_grad_() for name, t in leaves.items()}
    expected = reference.attention(*ref_qkv, *build(ref_leaves))
    expected.backward(dout)

    low_qkv = [t.to(device, dtype).requires_grad_() for t in qkv]
    # learned bias tables and temperatures stay fp32 parameters while activations are fp16
    low_leaves = {name: t.to(device, torch.float32).requires_grad_() for name, t in leaves.items()}
    out = attn.attention(*low_qkv, *build(low_leaves), backend=backend)
    assert out.dtype == dtype and out.shape == (B, H, n_q, D)
    out.backward(dout.to(device, dtype))

    errors = {"out": rel_err(out.cpu(), expected)}
    for name, low, ref in zip("qkv", low_qkv, ref_qkv, strict=True):
        errors[f"d{name}"] = rel_err(low.grad.cpu(), ref.grad)
    errors.update({f"d{name}": rel_err(low_leaves[name].grad.cpu(), ref_leaves[name].grad) for name in leaves})
    limits = {name: (TOL_REDUCTION if name == "dscale" else TOL)[dtype] for name in errors}
    failed = {name: f"{err:.2e}" for name, err in errors.items() if not err < limits[name]}
    assert not failed, f"errors above {limits}: {failed}"
    return out


# ----- the Triton kernel under TRITON_INTERPRET=1 -------------------------------------------------------
# (B, H, N_Q, N_K, D, bias, scale): the ViT regime (N 16, 49, 65, 197, 257; head dims 16-128) plus N = 1
# and 17, cross-attention lengths, B*H = 64, and every bias/scale form.
TRITON_FP32_CASES = [
    (2, 2, 16, 16, 16, None, "float"),
    (4, 3, 49, 49, 32, "window", "heads"),
    (2, 2, 65, 65, 64, "heads", None),
    (1, 2, 197, 197, 16, "keys", "heads"),
    (1, 1, 257, 257, 32, "full", None),
    (1, 2, 17, 17, 128, "heads", "heads"),
    (3, 1, 1, 1, 16, "full", "heads"),
    (16, 4, 16, 16, 16, "window", "heads"),  # dS of 8 batches per window summed in one program
    (20, 1, 16, 16, 16, "window", None),  # 10 batches per window: the second group of 8 is partial
    (2, 2, 1, 65, 16, "keys", None),  # CaiT class attention: one query over all tokens
    (1, 2, 20, 33, 24, "full", "heads"),  # head dim not a power of two
]


@pytest.mark.parametrize("B,H,n_q,n_k,D,bias_kind,scale_kind", TRITON_FP32_CASES)
def test_triton_fp32_matches_float64(B, H, n_q, n_k, D, bias_kind, scale_kind):
    check_against_reference("triton", B, H, n_q, n_k, D, bias_kind, scale_kind, torch.float32,
                            seed=B * 100_000 + n_q * 100 + D)


@pytest.mark.parametrize("B,H,n_q,n_k,D,bias_kind,scale_kind", [
    (4, 3, 49, 49, 32, "window", "heads"),
    (1, 2, 65, 65, 64, "heads", None),
    (2, 2, 17, 17, 16, None, "float"),
])
def test_triton_fp16_matches_float64(B, H, n_q, n_k, D, bias_kind, scale_kind):
    check_against_reference("triton", B, H, n_q, n_k, D, bias_kind, scale_kind, torch.float16, seed=7)


@pytest.mark.parametrize("n", [17, 49])
def test_triton_many_blocks_per_program(monkeypatch, n):
    """16-wide blocks: several key and query blocks per (b, h), so the online softmax rescales across
    blocks and the last block of both loops is partial."""
    monkeypatch.setattr(attn, "_CPU_BLOCK", 16)
    check_against_reference("triton", 2, 2, n, n, 16, "window", "heads", torch.float32, seed=n)


def masked_bias(kind, B, H, n, g):
    """An additive bias with -inf entries (fp32 leaf, (nb, H, N, N) windowed with nb = 2) and the rows it masks
    completely. kind: "first-block" (rows whose first 16 keys, one interpreter block, are -inf; later keys
    finite), "rows" (some rows entirely -inf, the rest random), "swin" (a Swin shift mask written with -inf
    instead of -100: blocks of tokens see only their own region)."""
    table = torch.randn(H, n, n, generator=g, dtype=torch.float64)
    mask = torch.zeros(2, 1, n, n, dtype=torch.float64)
    inf = float("-inf")
    if kind == "first-block":
        mask[0, :, ::2, :16] = inf  # every other row: the whole first key block, later keys finite
        mask[1, :, 1::3, : n - 1] = inf  # one visible key, the last one
    elif kind == "rows":
        mask[0, :, 3] = inf
        mask[1, :, [0, n - 1]] = inf
        mask[1, :, 5, ::2] = inf
    else:  # "swin": region r(i) = i * 3 // n; a token attends to keys of its own region only (window 1)
        region = torch.arange(n) * 3 // n
        mask[1, :] = torch.where(region[:, None] == region[None, :], 0.0, inf)
    full_rows = torch.isinf(mask).all(-1)  # (2, 1, N)
    return table, mask, full_rows


@pytest.mark.parametrize("backend,dtype", [(b, t) for b in ("triton", "math", "sdpa", "math_fp32")
                                           for t in (torch.float32, torch.float16)
                                           if not (b == "math_fp32" and t == torch.float32)])  # fp16/bf16 only
@pytest.mark.parametrize("kind", ["first-block", "rows", "swin"])
def test_minus_inf_rows_match_float64(monkeypatch, kind, dtype, backend):
    """-inf in the bias: a row whose first key block is all -inf is exact, a fully masked row gives output 0
    and contributes 0 to every gradient (torch 2.13's SDPA on CPU, math and flash alike, does this), and no
    NaN reaches dQ, dK, dV or dbias. Triton: 16-wide blocks, so N = 40 spans three key blocks."""
    monkeypatch.setattr(attn, "_CPU_BLOCK", 16)
    B, H, n, D = 4, 2, 40, 16
    g = torch.Generator().manual_seed(31)
    q, k, v, dout = (torch.randn(B, H, n, D, generator=g, dtype=torch.float64) for _ in range(4))
    table, mask, full_rows = masked_bias(kind, B, H, n, g)
    rows = full_rows.expand(2, H, n).repeat(B // 2, 1, 1)  # (B, H, N): batch b reads window b % 2
    # float64 expectation: fully masked rows get a finite bias and no upstream gradient, then output 0
    ref = [t.clone().requires_grad_() for t in (q, k, v, table)]
    ref_out = reference.attention(*ref[:3], ref[3] + mask.masked_fill(full_rows[..., None], 0.0))
    ref_out.backward(dout.masked_fill(rows[..., None], 0.0))
    expected = ref_out.detach().masked_fill(rows[..., None], 0.0)

    low = [t.to(dtype).requires_grad_() for t in (q, k, v)] + [table.float().requires_grad_()]
    out = attn.attention(*low[:3], low[3] + mask.float(), backend=backend)
    out.backward(dout.to(dtype))
    grads = [t.grad for t in low]
    for name, tensor in zip(("out", "dq", "dk", "dv", "dbias"), (out, *grads), strict=True):
        assert torch.isfinite(tensor).all(), name
    assert (out[rows] == 0).all() and (grads[0][rows] == 0).all()
    tol = {torch.float32: 1e-4, torch.float16: TOL[torch.float16]}[dtype]
    errors = {name: rel_err(a.cpu(), b) for name, a, b in
              zip(("out", "dq", "dk", "dv", "dbias"), (out, *grads), (expected, *(t.grad for t in ref)), strict=True)}
    assert all(err < tol for err in errors.values()), errors


def test_windowed_dbias_partials_are_summed_per_program():
    """B // nb = 10 batches per window: the dQ kernel sums dS over groups of 8 in registers, so the
    dbias partial buffer has cdiv(10, 8) = 2 rows per window instead of 10."""
    qkv, leaves, build, dout = make_case(20, 2, 16, 16, 16, "window", None, seed=9)
    bias, _ = build(leaves)  # (2, 2, 16, 16)
    q, k, v = (t.float() for t in qkv)
    bias32 = bias.float()
    out, lse = attn.attention_forward(q, k, v, bias32, None, 0.25)
    *_, ds, _ = attn.attention_backward(dout.float(), q, k, v, out, lse, bias32, None, 0.25, True, False)
    assert ds.shape == (2, 2, 2, 16, 16)  # (chunks, nb, H, N_Q, N_K)
    ref_bias = bias.clone().requires_grad_()
    reference.attention(*qkv, ref_bias, 0.25).backward(dout)
    assert rel_err(ds.sum(0), ref_bias.grad) < TOL[torch.float32]


def test_triton_strided_inputs():
    """q, k, v as views of one packed qkv tensor (what a model's qkv projection yields)."""
    g = torch.Generator().manual_seed(3)
    B, N, H, D = 2, 49, 3, 32
    qkv = torch.randn(B, N, 3, H, D, generator=g).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D), non-contiguous
    q, k, v = qkv.unbind(0)
    out = attn.attention(q, k, v, backend="triton")
    expected = reference.attention(q.double(), k.double(), v.double())
    assert rel_err(out, expected) < TOL[torch.float32]


def test_triton_backward_is_deterministic():
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(4, 2, 49, 16, generator=g, requires_grad=True) for _ in range(3))
    table = torch.randn(2, 49, 49, generator=g, requires_grad=True)
    scale = torch.full((2,), 0.25, requires_grad=True)
    dout = torch.randn(4, 2, 49, 16, generator=g)
    grads = []
    for _ in range(2):
        out = attn.attention(q, k, v, table.expand(2, 2, 49, 49), scale, backend="triton")
        grads.append(torch.autograd.grad(out, (q, k, v, table, scale), dout))
    for first, second in zip(*grads, strict=True):
        assert torch.equal(first, second)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (the interpreter gets bf16 wrong)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("B,H,n_q,n_k,D,bias_kind,scale_kind", [
    (64, 3, 49, 49, 32, "window", "heads"),  # autotuned blocks, grouped dS sums
    (8, 4, 197, 197, 64, "heads", None),
    (4, 2, 257, 257, 128, "keys", "heads"),
    (3, 2, 1, 65, 16, None, "float"),
])
def test_triton_cuda_matches_float64(B, H, n_q, n_k, D, bias_kind, scale_kind, dtype):
    check_against_reference("triton", B, H, n_q, n_k, D, bias_kind, scale_kind, dtype, seed=5, device="cuda")


def test_gpu_autotune_candidates_fit_the_shape():
    """The H100 candidates left after pruning (CPU-checkable: building the autotuners needs no driver)."""
    tuned = attn._tuned_kernels()
    for n in (1, 16, 17, 49, 65, 197, 257):
        grouped = attn._ds_group(10, n, cuda=True)  # what a windowed bias with 10 batches per window gets
        kernels = (("fwd", "BLOCK_M", 1, 1), ("dq", "BLOCK_M", 1, 1), ("dq", "BLOCK_M", 1, grouped),
                   ("dkdv", "BLOCK_N", 2, 1))
        for D in (16, 32, 48, 64, 128):
            block_d = attn._pow2_block(D)
            fused = attn._fused_dkdv(n, cuda=True)
            for name, program_block, accumulators, group in kernels:
                args = {"N_Q": n, "N_K": n, "BLOCK_D": block_d, "DS_GROUP": group, "FUSED_DKDV": fused}
                kept = tuned[name].early_config_prune(tuned[name].configs, args)
                assert kept, (name, n, D)
                for c in kept:
                    bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
                    assert min(32, attn._pow2_block(n)) <= min(bm, bn) and max(bm, bn) <= attn._pow2_block(n)
                    assert c.kwargs[program_block] * block_d * accumulators <= 64 * 32 * c.num_warps
                    assert group == 1 or bn >= n  # the grouped dS sum needs every key in one block
                    assert name != "dq" or not fused or bm >= n  # fused dK/dV: every query in one block
    assert attn._fused_dkdv(49, cuda=True) and not attn._fused_dkdv(65, cuda=True)
    assert attn._ds_group(10, 49, cuda=True) == 8 and attn._ds_group(10, 65, cuda=True) == 1
    small = tuned["fwd"].early_config_prune(tuned["fwd"].configs, {"N_Q": 16, "N_K": 16, "BLOCK_D": 32})
    assert {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in small} == {(16, 16)}


@pytest.mark.parametrize("name,bm,bn,warps,elem,fused,spills", [
    # measured by `python -m benchmarks.attention --sm90-report --unpruned` (swin-t 7x7 windows, D = 32):
    ("dq", 64, 64, 4, 2, True, True),  # bf16 fused backward: 132 B spilled
    ("dq", 64, 64, 8, 2, True, False),  # ... 8 warps: 0
    ("dq", 64, 64, 8, 4, True, True),  # fp32 IEEE fused backward, 8 warps: 12 B (4 warps: 15 KB)
    ("fwd", 64, 64, 4, 4, False, True),  # fp32 IEEE forward: 40 B
    ("fwd", 64, 64, 4, 2, False, False),  # bf16 forward: 207 registers, 0 spilled
    ("fwd", 64, 32, 4, 4, False, False),  # fp32 TF32 forward: 128 registers
])
def test_sm90_spill_rule_prunes_the_measured_spills(name, bm, bn, warps, elem, fused, spills):
    import triton

    config = triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=2)
    args = {"BLOCK_D": 32, "ELEMENT_BYTES": elem, "FUSED_DKDV": fused}
    assert attn._fits_registers(config, args, "BLOCK_M", 1) is not spills
    # fp32 never fuses 49-query windows on CUDA, so its backward always has a config that fits
    assert attn._fused_dkdv(49, cuda=True, element_bytes=2) and not attn._fused_dkdv(49, cuda=True, element_bytes=4)
    # ... nor sums Swin-T's dS over batches in registers (the extra fp32 tile spills: 44-72 B measured)
    assert attn._ds_group(10, 49, cuda=True, element_bytes=4) == 1 and attn._ds_group(10, 49, cuda=True) == 8
    assert attn._ds_group(10, 16, cuda=True, element_bytes=4) == 8


def test_ieee_fp32_at_head_dim_64_prefers_8_warps_and_tf32_keeps_the_rest():
    """Every IEEE fp32 candidate spills at D = 64 (sm_90 report), 8 warps least; TF32 candidates do not spill."""
    tuned = attn._tuned_kernels()
    for name in ("fwd", "dq", "dkdv"):
        args = {"N_Q": 197, "N_K": 197, "BLOCK_D": 64, "ELEMENT_BYTES": 4, "DS_GROUP": 1, "FUSED_DKDV": False}
        ieee = tuned[name].early_config_prune(tuned[name].configs, {**args, "DOT_PRECISION": "ieee"})
        tf32 = tuned[name].early_config_prune(tuned[name].configs, {**args, "DOT_PRECISION": "tf32"})
        assert ieee and all(c.num_warps == 8 for c in ieee), name
        assert set(ieee) < set(tf32), name


def test_deterministic_mode_pins_one_documented_config_per_shape():
    """set_deterministic(True): every launch of a shape gets pinned_config, the first candidate `_prune`
    keeps (CPU-checkable, like the autotune candidates); the autotuner stays the default."""
    tuned = attn._tuned_kernels()
    assert attn._deterministic is False
    for n, d in ((16, 32), (49, 32), (65, 16), (197, 64)):
        args = {"N_Q": n, "N_K": n, "BLOCK_D": attn._pow2_block(d), "DS_GROUP": 1,
                "FUSED_DKDV": attn._fused_dkdv(n, cuda=True), "DOT_PRECISION": "tf32", "ELEMENT_BYTES": 2}
        for name in ("fwd", "dq", "dkdv"):
            pinned = attn.pinned_config(name, args)
            assert pinned is attn.pinned_config(name, dict(args))  # the same object every call
            assert pinned is tuned[name].early_config_prune(tuned[name].configs, args)[0]
    small = attn.pinned_config("fwd", {"N_Q": 16, "N_K": 16, "BLOCK_D": 32})
    assert (small.kwargs["BLOCK_M"], small.kwargs["BLOCK_N"], small.num_warps) == (16, 16, 2)
    try:
        attn.set_deterministic(True)
        assert attn._deterministic is True
    finally:
        attn.set_deterministic(False)


@pytest.fixture
def restore_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32  # a property of torch's cuBLAS module: monkeypatch cannot
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


def test_tf32_only_for_fp32_on_cuda_when_torch_allows_it(restore_tf32):
    torch.backends.cuda.matmul.allow_tf32 = False
    assert attn.dot_precision(torch.float32, "cuda") == "ieee"  # IEEE stays the fp32 default
    assert attn.dot_precision(torch.float32, "cuda", tf32=True) == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = True
    assert attn.dot_precision(torch.float32, "cuda") == "tf32"
    assert attn.dot_precision(torch.float32, "cuda", tf32=False) == "ieee"
    assert attn.dot_precision(torch.float32, "cpu") == "ieee"  # the interpreter computes fp32 anyway
    assert attn.dot_precision(torch.bfloat16, "cuda") == attn.dot_precision(torch.float16, "cpu") == "tf32"


COMPILE_SCRIPT = """
import importlib
from benchmarks.attention import Shape, compile_generic_sm90, compile_sm90
attn = importlib.import_module("fastvit.kernels.attention")
shape = Shape("swin window", B=64, H=3, N=17, D=24, nb=4)
base = dict(HEAD_DIM=24, BLOCK_D=32, BLOCK_M=16, BLOCK_N=16, HAS_BIAS=True, PER_HEAD_SCALE=True, DOT_PRECISION="tf32")
dq = dict(STORE_DS=True, STORE_DSCALE=True)
variants = [("bf16", attn._attn_fwd_kernel, {}), ("fp32", attn._attn_fwd_kernel, dict(DOT_PRECISION="ieee")),
            ("bf16", attn._attn_bwd_dkdv_kernel, {}),
            ("fp16", attn._attn_bwd_dq_kernel, dict(dq, DS_GROUP=1, FUSED_DKDV=False)),
            ("bf16", attn._attn_bwd_dq_kernel, dict(dq, DS_GROUP=4, FUSED_DKDV=True))]
for dtype, kernel, extra in variants:
    use = compile_sm90(kernel, shape, dtype, num_warps=2, num_stages=1, **{**base, **extra})
    assert use["registers"] > 0 and use["spill_stores"] == 0, use
    if dtype == "fp32":  # IEEE fp32: no tensor-core instruction
        assert use["wgmma"] == use["mma"] == 0, use
# fp32 inputs with TF32 allowed: tensor cores (wgmma for a 64-row tile)
tf32 = compile_sm90(attn._attn_fwd_kernel, shape, "fp32", num_warps=4, num_stages=2,
                    **{**base, "BLOCK_M": 64, "BLOCK_N": 32, "DOT_PRECISION": "tf32"})
assert tf32["wgmma"] > 0 and tf32["spill_stores"] == 0, tf32
drloc = importlib.import_module("fastvit.kernels.drloc_pairs")
import triton.language as tl
for kernel, consts in ((drloc._drloc_pairs_fwd_kernel, dict(SAMPLE=True, USE_ABS=True, BLOCK_M=32, BLOCK_C=128)),
                       (drloc._drloc_pairs_bwd_kernel, dict(BLOCK_S=32, BLOCK_C=256))):
    use = compile_generic_sm90(kernel, "bf16", num_warps=4, SUM_HALVES=True, ACC=tl.float32, **consts)
    assert use["registers"] > 0 and use["spill_stores"] == 0, use
print("compiled", len(variants) + 3)
"""


def test_kernels_compile_for_h100():
    """The interpreter accepts code the compiler rejects (e.g. non-constexpr globals): build every kernel
    variant (attention bf16/fp16, fp32 IEEE without tensor cores, fp32 TF32 with them; drloc_pairs) for
    sm_90 through ptxas, which needs no GPU, in a process without TRITON_INTERPRET."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], cwd=Path(__file__).resolve().parents[1],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "compiled 8" in result.stdout, result.stderr[-3000:]


# ----- the torch backends, same reference --------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("B,H,n_q,n_k,D,bias_kind,scale_kind", [
    (4, 3, 49, 49, 32, "window", "heads"),
    (2, 2, 65, 65, 16, "keys", "float"),
    (2, 2, 1, 17, 16, "heads", None),
])
def test_torch_backends_match_float64(backend, B, H, n_q, n_k, D, bias_kind, scale_kind):
    check_against_reference(backend, B, H, n_q, n_k, D, bias_kind, scale_kind, torch.float32, seed=B * n_k)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,H,n_q,n_k,D,bias_kind,scale_kind", [
    (4, 3, 16, 16, 32, "window", "heads"),  # Swin at 32 px: 4x4 windows
    (8, 2, 17, 17, 16, None, "float"),  # DINO's 16-px local crops, CLS included
    (2, 2, 65, 65, 16, "keys", None),
    (3, 2, 1, 49, 16, "heads", None),
])
def test_math_fp32_softmax_matches_float64(B, H, n_q, n_k, D, bias_kind, scale_kind, dtype):
    check_against_reference("math_fp32", B, H, n_q, n_k, D, bias_kind, scale_kind, dtype, seed=n_k)


def test_math_fp32_softmax_rounds_only_the_matmuls():
    """bf16 scores and probabilities, the bias add and softmax in fp32: its output is the float64 softmax
    of the bf16-rounded biased scores, rounded once to bf16, then times v. `math` rounds the bias, the
    biased scores and the probabilities to bf16 on the way and misses that by far more."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(64, 3, 16, 32, generator=g).bfloat16() for _ in range(3))
    bias = torch.randn(3, 16, 16, generator=g) * 3
    scores = ((q * 32**-0.5) @ k.transpose(-2, -1)).double() + bias.double()
    probs = torch.softmax(scores, dim=-1).bfloat16()
    expected = (probs.double() @ v.double())
    errors = {name: (attn.attention(q, k, v, bias, backend=name).double() - expected).abs().max().item()
              for name in ("math", "math_fp32")}
    assert errors["math_fp32"] <= 2**-8 * expected.abs().max().item(), errors  # the final bf16 rounding
    assert errors["math"] > 2 * errors["math_fp32"], errors


def test_math_fp32_softmax_is_for_half_inputs_only():
    x = torch.zeros(1, 1, 4, 16)
    with pytest.raises(UserError, match="math_fp32.*dtype torch.float32: only fp16/bf16 inputs"):
        attn.attention(x, x, x, backend="math_fp32")


def test_xformers_adapter_against_a_stand_in(monkeypatch):
    """The xformers backend's own work (layout (B, N, H, D), 8-aligned windowed bias, folded per-head scale,
    their gradients) checked with a stand-in for xformers.ops that computes in that layout."""
    def memory_efficient_attention(q, k, v, attn_bias=None, scale=None):  # (B, N, H, D) tensors
        assert attn_bias is None or (attn_bias.shape == (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
                                     and attn_bias.stride(-2) % 8 == 0)
        return reference.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias,
                                   scale).transpose(1, 2)

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    package = types.ModuleType("xformers")
    package.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    monkeypatch.setattr(attn.XformersBackend, "not_supported_reasons", lambda self, inputs: [])
    check_against_reference("xformers", 4, 3, 49, 49, 32, "window", "heads", torch.float32, seed=3)
    check_against_reference("xformers", 2, 2, 17, 17, 16, "keys", "float", torch.float32, seed=4)


def test_single_element_scale_tensor_gets_the_summed_gradient():
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, 3, 16, 16, generator=g) for _ in range(3))
    grads = {}
    for backend in ("triton", "math"):
        scale = torch.tensor([0.3], requires_grad=True)  # one temperature shared by every head
        attn.attention(q, k, v, scale=scale, backend=backend).square().sum().backward()
        grads[backend] = scale.grad
    assert grads["triton"].shape == (1,)
    assert rel_err(grads["triton"], grads["math"].double()) < TOL_REDUCTION[torch.float32]


# ----- torch.library op and torch.compile ------------------------------------------------------------
def test_custom_op_passes_opcheck():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 16, 16, generator=g, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, 2, 16, 16, generator=g, requires_grad=True)
    scale = torch.rand(2, generator=g, requires_grad=True)
    torch.library.opcheck(attn._attention_fwd_op, (q, k, v, bias, scale, 0.0, "ieee"),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_torch_compile_traces_the_op():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 2, 17, 16, generator=g, requires_grad=True) for _ in range(3))
    table = torch.randn(2, 17, 17, generator=g, requires_grad=True)
    scale = torch.full((2,), 0.3, requires_grad=True)

    def loss_fn(q, k, v, table, scale):
        return attn.attention(q, k, v, table, scale, backend="triton").square().sum()

    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)  # fullgraph: no graph break
    inputs = (q, k, v, table, scale)
    eager_loss = loss_fn(*inputs)
    eager_grads = torch.autograd.grad(eager_loss, inputs)
    compiled_loss = compiled(*inputs)
    compiled_grads = torch.autograd.grad(compiled_loss, inputs)
    assert torch.allclose(compiled_loss, eager_loss, rtol=1e-6)
    for got, want in zip(compiled_grads, eager_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)


# ----- dispatch ------------------------------------------------------------------------------------------
def inputs(device_type="cpu", dtype=torch.float32, head_dim=32, value_dim=None, has_bias=False,
           per_head_scale=False, n_q=197, n_k=197):
    return attn.AttentionInputs(device_type, dtype, head_dim, value_dim or head_dim, has_bias, per_head_scale,
                                n_q, n_k)


def test_auto_without_a_known_shape_takes_the_first_eligible_backend_on_cpu():
    assert os.environ.get("TRITON_INTERPRET") == "1"  # conftest: triton could run here, but only when forced
    assert attn.select_backend(inputs()).name == "sdpa"  # batch/heads unknown: nothing to measure
    assert attn.select_backend(inputs(has_bias=True, per_head_scale=True)).name == "sdpa"


@pytest.fixture
def fresh_choices(monkeypatch, tmp_path):
    """An empty choices cache (disk and memory) and auto dispatch with nothing chosen yet."""
    from fastvit import choices

    monkeypatch.setenv("FASTVIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(choices, "_memory", {})
    monkeypatch.setattr(attn, "_chosen", {})
    return choices


class FakeTimer:
    """Runs each candidate once for real (so fwd+bwd must work) and reports the time set for the backend
    that ran: dispatch tests need no clock."""

    def __init__(self, monkeypatch, times):
        self.times, self.ran, self.calls = times, [], 0
        for backend in (attn.SdpaBackend, attn.MathBackend):
            original = backend.__call__

            def spy(impl, *args, _original=original):
                self.ran.append(impl.name)
                return _original(impl, *args)

            monkeypatch.setattr(backend, "__call__", spy)

    def __call__(self, fn, device):
        self.calls += 1
        fn()
        return self.times[self.ran[-1]]


def qkv_bias(B=4, H=2, N=9, D=8, nb=2):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    return q, k, v, torch.randn(nb, H, N, N, generator=g)


def test_auto_measures_each_eligible_backend_once_and_takes_the_fastest(monkeypatch, fresh_choices):
    q, k, v, bias = qkv_bias()
    shape = attn.AttentionInputs.from_tensors(q, k, v, bias)
    timer = FakeTimer(monkeypatch, {"sdpa": 2.0, "math": 1.0})
    assert attn.select_backend(shape, timer=timer).name == "math"
    assert sorted(set(timer.ran)) == ["math", "sdpa"] and timer.calls == 8  # 2 backends x 4 interleaved rounds
    assert attn.select_backend(shape, timer=timer).name == "math" and timer.calls == 8  # chosen once
    other = attn.AttentionInputs.from_tensors(q[:, :, :5], k, v)  # another shape: measured on its own
    timer.times = {"sdpa": 1.0, "math": 3.0}
    assert attn.select_backend(other, timer=timer).name == "sdpa" and timer.calls == 16
    assert attn._chosen == {shape.describe(): "math", other.describe(): "sdpa"}


def test_auto_choice_is_read_back_from_the_disk_cache(monkeypatch, fresh_choices):
    q, k, v, bias = qkv_bias()
    shape = attn.AttentionInputs.from_tensors(q, k, v, bias)
    attn.select_backend(shape, timer=FakeTimer(monkeypatch, {"sdpa": 1.0, "math": 5.0}))
    (key, record), = json.loads(fresh_choices.cache_path().read_text()).items()
    assert record == {"choice": "sdpa", "seconds": {"sdpa": 1.0, "math": 5.0}, "measured": True}
    assert json.loads(key)["inputs"] == "cpu float32 B4 H2 N9x9 D8/8 bias 2x2x9x9"
    assert json.loads(key)["torch"] == torch.__version__
    monkeypatch.setattr(attn, "_chosen", {})  # a new process: memory empty, the file stays
    monkeypatch.setattr(fresh_choices, "_memory", {})

    def no_timing(fn, device):
        raise AssertionError("measured again despite the cached choice")

    assert attn.select_backend(shape, timer=no_timing).name == "sdpa"


def test_auto_does_not_measure_in_deterministic_runs(monkeypatch, fresh_choices):
    q, k, v, _ = qkv_bias()
    monkeypatch.setattr(fresh_choices, "may_measure", lambda: False)
    timer = FakeTimer(monkeypatch, {"sdpa": 9.0, "math": 1.0})
    assert attn.select_backend(attn.AttentionInputs.from_tensors(q, k, v), timer=timer).name == "sdpa"
    assert timer.calls == 0 and not fresh_choices.cache_path().exists()


def test_auto_under_tracing_uses_the_eager_choice_or_the_fallback(monkeypatch, fresh_choices):
    q, k, v, bias = qkv_bias()
    chosen = attn.AttentionInputs.from_tensors(q, k, v, bias)
    attn.select_backend(chosen, timer=FakeTimer(monkeypatch, {"sdpa": 2.0, "math": 1.0}))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)

    def no_timing(fn, device):
        raise AssertionError("measured while tracing")

    assert attn.select_backend(chosen, timer=no_timing).name == "math"
    unseen = attn.AttentionInputs.from_tensors(q[:, :, :3], k, v)
    assert attn.select_backend(unseen, timer=no_timing).name == "sdpa"  # PRIORITY's first eligible
    assert unseen.describe() not in attn._chosen  # a traced fallback is not remembered as a choice


def test_tracing_in_a_new_process_reads_the_measured_choice_from_disk(monkeypatch, fresh_choices):
    """A module compiled before any eager call (a new process: nothing chosen in memory) takes the choice
    this machine measured before, not PRIORITY's first eligible backend (sdpa: 3x slower steps on a CPU)."""
    q, k, v, bias = qkv_bias()
    chosen = attn.AttentionInputs.from_tensors(q, k, v, bias)
    attn.select_backend(chosen, timer=FakeTimer(monkeypatch, {"sdpa": 2.0, "math": 1.0}))
    monkeypatch.setattr(attn, "_chosen", {})
    monkeypatch.setattr(fresh_choices, "_memory", {})  # the record comes back from the file
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert attn.select_backend(chosen, timer=None).name == "math"
    monkeypatch.setattr(fresh_choices, "may_measure", lambda: False)  # deterministic: the fallback, as eagerly
    assert attn.select_backend(chosen, timer=None).name == "sdpa"


def test_compiled_attention_follows_the_eager_choice_and_later_choices_do_not_recompile(monkeypatch,
                                                                                       fresh_choices):
    import torch._dynamo

    q, k, v, bias = qkv_bias()
    timer = FakeTimer(monkeypatch, {"sdpa": 2.0, "math": 1.0})
    attn.select_backend(attn.AttentionInputs.from_tensors(q, k, v, bias), timer=timer)
    # tell the backends apart by their output under tracing
    monkeypatch.setattr(attn.MathBackend, "__call__", lambda self, q, k, v, bias, scale: q * 0 + 1)
    monkeypatch.setattr(attn.SdpaBackend, "__call__", lambda self, q, k, v, bias, scale: q * 0 + 2)
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v, bias: attn.attention(q, k, v, bias), backend="eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert torch.equal(compiled(q, k, v, bias), torch.ones_like(q))
        attn._chosen["cpu float32 B1 H1 N1x1 D1/1 bias none"] = "sdpa"  # the cache grows (e.g. eval shapes)
        assert torch.equal(compiled(q, k, v, bias), torch.ones_like(q))  # no recompile (it would raise)
    torch._dynamo.reset()


def test_record_and_preset_choices(monkeypatch, fresh_choices):
    q, k, v, bias = qkv_bias()
    shape = attn.AttentionInputs.from_tensors(q, k, v, bias)
    with attn.record_choices() as made:
        attn.attention(q, k, v, bias, backend="math")
        attn.attention(q, k, v, backend="sdpa")
    attn.attention(q, k, v, bias, backend="sdpa")  # outside the block: not recorded
    assert made == {shape.describe(): "math", attn.AttentionInputs.from_tensors(q, k, v).describe(): "sdpa"}
    attn.preset_choices({shape.describe(): "math", "cpu x": "no-such-backend"})
    assert attn._chosen == {shape.describe(): "math"}

    def no_timing(fn, device):
        raise AssertionError("measured a preset shape")

    assert attn.select_backend(shape, timer=no_timing).name == "math"


def test_a_backend_failing_at_run_time_is_left_out_of_the_measurement(monkeypatch, fresh_choices):
    q, k, v, _ = qkv_bias()

    def refuse(self, *args):
        raise RuntimeError("No available kernel. Aborting execution.")

    monkeypatch.setattr(attn.SdpaBackend, "__call__", refuse)
    shape = attn.AttentionInputs.from_tensors(q, k, v)
    assert attn.select_backend(shape).name == "math"
    (record,) = json.loads(fresh_choices.cache_path().read_text()).values()
    assert record["failed"] == {"sdpa": "No available kernel. Aborting execution."}
    assert list(record["seconds"]) == ["math"]


def test_auto_on_cuda_falls_back_to_the_priority_list_without_a_shape(monkeypatch):
    assert attn.select_backend(inputs("cuda", torch.bfloat16)).name == "triton"
    # head dim 256: triton refuses, so xformers if installed, else sdpa
    monkeypatch.setattr(attn, "_xformers_version", lambda: Version("0.0.35"))
    assert attn.select_backend(inputs("cuda", head_dim=256)).name == "xformers"
    monkeypatch.setattr(attn, "_xformers_version", lambda: None)
    assert attn.select_backend(inputs("cuda", head_dim=256)).name == "sdpa"


def test_sdpa_kernel_backends_declare_their_limits():
    flash, efficient, cudnn = (attn._BACKENDS[n] for n in ("sdpa_flash", "sdpa_efficient", "sdpa_cudnn"))
    assert flash.not_supported_reasons(inputs("cuda", torch.float32, has_bias=True)) == [
        "dtype torch.float32 is not float16 or bfloat16", "takes no additive bias"]
    assert efficient.not_supported_reasons(inputs("cuda", torch.float32, has_bias=True)) == []
    assert cudnn.not_supported_reasons(inputs("cuda", torch.bfloat16, has_bias=True)) == []
    assert efficient.not_supported_reasons(inputs()) == ["needs CUDA tensors, got cpu"]
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(UserError, match="'sdpa_flash' cannot run these inputs: needs CUDA tensors, got cpu"):
        attn.attention(q, q, q, backend="sdpa_flash")


def test_env_and_argument_force_a_backend(monkeypatch):
    monkeypatch.setenv("FASTVIT_ATTN", "math")
    assert attn.select_backend(inputs()).name == "math"
    assert attn.select_backend(inputs(), backend="triton").name == "triton"  # the argument wins
    monkeypatch.setenv("FASTVIT_ATTN", "triton")
    assert attn.select_backend(inputs()).name == "triton"  # CPU through the interpreter, only when forced


def test_forced_backend_runs_the_forced_backend(monkeypatch):
    calls = []
    monkeypatch.setattr(attn.MathBackend, "__call__", lambda self, *args: calls.append("math") or args[0])
    q = torch.randn(1, 1, 16, 16)
    monkeypatch.setenv("FASTVIT_ATTN", "math")
    attn.attention(q, q, q)
    assert calls == ["math"]


def test_unknown_backend_lists_choices(monkeypatch):
    with pytest.raises(UserError, match=r"unknown attention backend 'flash'; choose from auto, triton, "
                                        r"xformers, sdpa, sdpa_flash, sdpa_efficient, sdpa_cudnn, math, math_fp32$"):
        attn.select_backend(inputs(), backend="flash")
    monkeypatch.setenv("FASTVIT_ATTN", "cudnn")
    with pytest.raises(UserError, match="unknown attention backend 'cudnn'"):
        attn.attention(*(torch.zeros(1, 1, 4, 16),) * 3)


def test_forced_xformers_on_cpu_lists_every_reason(monkeypatch):
    monkeypatch.setattr(attn, "_xformers_version", lambda: None)
    with pytest.raises(UserError, match=r"attention backend 'xformers' cannot run these inputs: xformers is "
                                        r"not installed .*; needs CUDA tensors, got cpu$"):
        attn.select_backend(inputs(), backend="xformers")
    monkeypatch.setattr(attn, "_xformers_version", lambda: Version("0.0.9"))
    with pytest.raises(UserError, match=r"xformers 0\.0\.9 is older than 0\.0\.35; needs CUDA tensors"):
        attn.select_backend(inputs(), backend="xformers")


def test_forced_triton_without_interpreter_or_with_unsupported_inputs(monkeypatch):
    with pytest.raises(UserError, match=r"'triton' cannot run these inputs: head dim 256 > 128; value head "
                                        r"dim 64 differs from query/key head dim 256"):
        attn.select_backend(inputs(head_dim=256, value_dim=64), backend="triton")
    with pytest.raises(UserError, match=r"needs CUDA tensors \(or CPU with TRITON_INTERPRET=1\), got mps"):
        attn.select_backend(inputs("mps"), backend="triton")
    with pytest.raises(UserError, match="the Triton CPU interpreter computes bfloat16 wrongly"):
        attn.attention(*(torch.zeros(1, 1, 16, 16, dtype=torch.bfloat16),) * 3, backend="triton")
    assert attn.select_backend(inputs("cuda", torch.bfloat16), backend="triton").name == "triton"
    monkeypatch.setattr(attn, "_interpreting", lambda: False)
    with pytest.raises(UserError, match="CPU tensors need TRITON_INTERPRET=1 set before fastvit.kernels is "
                                        "imported"):
        attn.select_backend(inputs(), backend="triton")
    monkeypatch.setattr(attn, "triton", None)
    with pytest.raises(UserError, match="'triton' cannot run these inputs: triton is not installed$"):
        attn.select_backend(inputs(), backend="triton")


def test_no_backend_for_integer_inputs_lists_all_refusals():
    with pytest.raises(UserError, match=r"no attention backend can run these inputs \(triton: not "
                                        r"auto-selected on cpu; xformers: .*; sdpa: dtype torch.int64 is "
                                        r"not floating point; sdpa_flash: not auto-selected on cpu; .*; "
                                        r"math: dtype torch.int64"):
        attn.select_backend(inputs(dtype=torch.int64))


QKV = ((2, 3, 16, 8),) * 3


@pytest.mark.parametrize("shapes,bias_shape,scale,message", [
    (QKV, (3, 3, 16, 16), None, r"leading dim must be 1, B or a divisor"),
    (QKV, (2, 16, 17), None, r"does not broadcast to \(B, H, N_Q, N_K\) = \(2, 3, 16, 16\)"),
    (((2, 3, 16, 8), (2, 3, 9, 8), (2, 3, 16, 8)), None, None, "attention shapes disagree"),
    (((2, 3, 16), (2, 3, 16), (2, 3, 16)), None, None, r"takes \(B, H, N, D\) tensors"),
    (QKV, None, torch.ones(2), "has 2 elements; need 1 or H = 3"),
    (QKV, None, None, "q, k, v dtypes differ: torch.float32, torch.float32, torch.float16"),
])
def test_bad_inputs_raise_user_error(shapes, bias_shape, scale, message):
    q, k, v = (torch.zeros(s) for s in shapes)
    if "dtypes" in message:
        v = v.half()
    bias = torch.zeros(bias_shape) if bias_shape else None
    for backend in ("triton", "sdpa"):
        with pytest.raises(UserError, match=message):
            attn.attention(q, k, v, bias, scale, backend=backend)
