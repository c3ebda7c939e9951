"""Attention microbenchmark: `python -m benchmarks.attention [--check-only | --sm90-report]`.

On CUDA: median time (triton.testing.do_bench) of forward and forward+backward for the fastvit Triton
kernel against SDPA (flash, efficient, cuDNN where present) and xformers (when installed), as ms,
TFLOP/s and GB/s, for the ViT regime (N 16-257, head dim 16-64, B*H >= 1024), next to the H100
roofline of each shape. On CPU: checks the kernel (Triton interpreter) against the float64
reference on small shapes and says that no GPU timing was taken. `--sm90-report` compiles every
autotune candidate of every kernel launch for H100 without a GPU and prints ptxas registers / spills.

FLOPs count the algorithmic matmuls: forward 4*B*H*N_Q*N_K*D (QK^T and PV), backward 2.5x that
(recomputed QK^T, dP, dV, dQ, dK). Minimum bytes: every input read once and every output written
once (bias read once per distinct element; LSE saved by the forward and read by the backward).
"""

import argparse
import importlib
import os
from dataclasses import dataclass

import torch

from fastvit.errors import UserError

H100_BF16_FLOPS = 989e12  # dense bf16 tensor-core peak, FLOP/s (SXM)
H100_BYTES_PER_S = 3.35e12  # HBM3 bandwidth, bytes/s


@dataclass(frozen=True)
class Shape:
    """One attention call: q/k/v (B, H, N, D); windowed bias (nb, H, N, N) when nb > 0."""

    label: str
    B: int
    H: int
    N: int
    D: int
    nb: int = 0  # windows in the batch (Swin: relative-position bias + shift mask); 0 = no bias

    def flops(self, backward):
        fwd = 4 * self.B * self.H * self.N * self.N * self.D
        return fwd * 3.5 if backward else fwd

    def min_bytes(self, backward, elem=2, bias_elem=4):
        """Bytes that must cross HBM: q, k, v, o (+ dO, dq, dk, dv), LSE (fp32), bias (+ dbias)."""
        bh = self.B * self.H
        tensor = bh * self.N * self.D * elem
        lse = bh * self.N * 4
        bias = self.nb * self.H * self.N * self.N * bias_elem
        fwd = 4 * tensor + lse + bias  # read q, k, v, bias; write o, lse
        if not backward:
            return fwd
        bwd = 5 * tensor + lse + bias + 3 * tensor + bias  # read q k v o dO lse bias; write dq dk dv dbias
        return fwd + bwd

    def roofline_s(self, backward):
        return max(self.flops(backward) / H100_BF16_FLOPS, self.min_bytes(backward) / H100_BYTES_PER_S)


# The ViT regime of this project (SPEC.md): batch sizes chosen so that B * H >= 1024.
SHAPES = (
    Shape("swin 4x4 window, 32px", B=256 * 16, H=3, N=16, D=32, nb=16),
    Shape("swin-t 7x7 window", B=128 * 64, H=3, N=49, D=32, nb=64),
    Shape("vit 8x8+cls", B=256, H=12, N=65, D=16),
    Shape("cait 8x8+cls", B=256, H=4, N=65, D=48),
    Shape("t2t/vit 14x14+cls", B=128, H=8, N=197, D=64),
    Shape("vit 16x16+cls", B=64, H=16, N=257, D=64),
)


def roofline_table(shapes=SHAPES):
    """Markdown table: per shape FLOPs, minimum bytes and the H100 roofline time of fwd and fwd+bwd."""
    rows = ["| shape | B*H | N | D | bias | fwd GFLOP | fwd MB | fwd roofline us | fwd+bwd GFLOP | "
            "fwd+bwd MB | fwd+bwd roofline us | bound |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in shapes:
        bound = "memory" if s.min_bytes(True) / H100_BYTES_PER_S > s.flops(True) / H100_BF16_FLOPS else "compute"
        rows.append(
            f"| {s.label} | {s.B * s.H} | {s.N} | {s.D} | {'windowed' if s.nb else '-'} "
            f"| {s.flops(False) / 1e9:.2f} | {s.min_bytes(False) / 1e6:.1f} | {s.roofline_s(False) * 1e6:.1f} "
            f"| {s.flops(True) / 1e9:.2f} | {s.min_bytes(True) / 1e6:.1f} | {s.roofline_s(True) * 1e6:.1f} "
            f"| {bound} |")
    return "\n".join(rows)


def make_inputs(shape, device, dtype, seed=0):
    """q, k, v (B, H, N, D) and, for windowed shapes, a learned (H, N, N) table plus a fixed (nb, 1, N, N)
    shift mask; all leaves require grad except the mask."""
    g = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(shape.B, shape.H, shape.N, shape.D, generator=g, device=device, dtype=dtype)
               .requires_grad_() for _ in range(3))
    table = mask = None
    if shape.nb:
        table = (0.1 * torch.randn(shape.H, shape.N, shape.N, generator=g, device=device)).requires_grad_()
        mask = torch.where(torch.rand(shape.nb, 1, shape.N, shape.N, generator=g, device=device) < 0.3, -100.0, 0.0)
        mask[..., 0] = 0.0
    return q, k, v, table, mask


# Backward-mode A/B of the Triton kernel (module knobs of fastvit.kernels.attention, set while timing).
TRITON_VARIANTS = {
    "fastvit-triton": {},
    "fastvit-triton two-kernel bwd": {"FUSED_BWD_MAX_N": 0},
    "fastvit-triton no dS grouping": {"DS_GROUP_MAX": 1},
}


def providers(shape):
    """name -> callable(q, k, v, bias) for every attention implementation available here."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from fastvit.kernels import attention

    def sdpa(backend):
        def run(q, k, v, bias):
            if bias is not None:  # the fused SDPA kernels take a 4-D (B, H, N, N) bias: materialize it
                bias = bias.expand(shape.B // shape.nb, *bias.shape).flatten(0, 1).to(q.dtype)
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return run

    found = {name: lambda q, k, v, bias: attention(q, k, v, bias, backend="triton") for name in TRITON_VARIANTS}
    if shape.N > 64:  # neither knob changes anything there
        found = {"fastvit-triton": found["fastvit-triton"]}
    elif not shape.nb:
        del found["fastvit-triton no dS grouping"]
    found["sdpa-flash"] = sdpa(SDPBackend.FLASH_ATTENTION)
    found["sdpa-efficient"] = sdpa(SDPBackend.EFFICIENT_ATTENTION)
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        found["sdpa-cudnn"] = sdpa(SDPBackend.CUDNN_ATTENTION)
    try:
        import xformers.ops  # noqa: F401

        found["xformers"] = lambda q, k, v, bias: attention(q, k, v, bias, backend="xformers")
    except ImportError:
        pass
    return found


def time_provider(fn, q, k, v, table, mask, dout):
    """Median ms of forward and of forward+backward (triton.testing.do_bench)."""
    from triton.testing import do_bench

    def forward():
        bias = table + mask if table is not None else None  # (nb, H, N, N), windowed
        return fn(q, k, v, bias)

    def forward_backward():
        forward().backward(dout)

    forward_backward()  # compile / autotune outside the timed region
    leaves = [t for t in (q, k, v, table) if t is not None]
    return do_bench(forward, return_mode="median"), do_bench(forward_backward, grad_to_none=leaves,
                                                             return_mode="median")


def bench_cuda(shapes=SHAPES, dtype=torch.bfloat16):
    attn = importlib.import_module("fastvit.kernels.attention")  # the module, for the A/B knobs
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, dtype {dtype}")
    print("| shape | provider | fwd ms | fwd TFLOP/s | fwd GB/s | fwd+bwd ms | fwd+bwd TFLOP/s | fwd+bwd GB/s |"
          " roofline / fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|---|")
    for shape in shapes:
        q, k, v, table, mask = make_inputs(shape, "cuda", dtype)
        dout = torch.randn_like(q)
        for name, fn in providers(shape).items():
            knobs = TRITON_VARIANTS.get(name, {})
            saved = {knob: getattr(attn, knob) for knob in knobs}
            try:
                for knob, value in knobs.items():
                    setattr(attn, knob, value)
                fwd_ms, full_ms = time_provider(fn, q, k, v, table, mask, dout)
            except (RuntimeError, UserError) as err:  # e.g. flash refuses a bias: record and move on
                print(f"| {shape.label} | {name} | n/a: {str(err).splitlines()[0][:60]} | | | | | | |")
                continue
            finally:
                for knob, value in saved.items():
                    setattr(attn, knob, value)
            cells = []
            for ms, backward in ((fwd_ms, False), (full_ms, True)):
                cells += [f"{ms:.3f}", f"{shape.flops(backward) / ms / 1e9:.1f}",
                          f"{shape.min_bytes(backward) / ms / 1e6:.0f}"]
            print(f"| {shape.label} | {name} | {' | '.join(cells)} | {shape.roofline_s(True) * 1e3 / full_ms:.0%} |")


def check_cpu():
    """Forward and every gradient of the interpreted kernel against float64, on shrunken shapes."""
    from fastvit.kernels import attention, reference

    worst = 0.0
    for shape in SHAPES[:3]:
        small = Shape(shape.label, B=4 if shape.nb else 2, H=2, N=shape.N, D=shape.D, nb=2 if shape.nb else 0)
        q, k, v, table, mask = make_inputs(small, "cpu", torch.float32, seed=1)
        leaves = [t for t in (q, k, v, table) if t is not None]
        ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
        bias = table + mask if table is not None else None
        ref_bias = ref_leaves[3] + mask.double() if table is not None else None
        out = attention(q, k, v, bias, backend="triton")
        ref = reference.attention(*ref_leaves[:3], ref_bias)
        dout = torch.randn_like(ref)
        grads = torch.autograd.grad(out, leaves, dout.float())
        ref_grads = torch.autograd.grad(ref, ref_leaves, dout)
        errors = [((a.double() - b).norm() / b.norm()).item()
                  for a, b in zip((out, *grads), (ref, *ref_grads), strict=True)]
        worst = max(worst, *errors)
        names = ["out", "dq", "dk", "dv", "dbias"][: len(errors)]
        print(f"{small.label} (B*H={small.B * small.H}, N={small.N}, D={small.D}): "
              + ", ".join(f"{n} {e:.1e}" for n, e in zip(names, errors, strict=True)))
    status = "OK" if worst < 2e-5 else "FAILED"
    print(f"correctness vs float64 (fp32, Triton interpreter): worst relative error {worst:.1e} -> {status}")
    return worst < 2e-5


# Kernel pointer arguments that are fp32 whatever the input dtype (statistics, partial sums, bias, scale).
_FP32_POINTERS = {"Lse", "Delta", "DS", "DScaleRows", "Scale", "Bias"}
_BIAS_STRIDES = ("stride_bb", "stride_bh", "stride_bm", "stride_bn")


def launch_ints(shape):
    """The integer kernel arguments a launch on `shape` passes: contiguous (B, H, N, D) tensors and, when
    windowed, a contiguous (nb, H, N, N) bias. Their values decide Triton's specialization."""
    B, H, N, D = shape.B, shape.H, shape.N, shape.D
    tensor = {"b": H * N * D, "h": N * D, "m": D, "n": D, "d": 1}
    bias = dict(zip(_BIAS_STRIDES, (H * N * N, N * N, N, 1), strict=True))
    ints = {"H": H, "NB": max(shape.nb, 1), "N_GROUPS": B // max(shape.nb, 1), "N_Q": N, "N_K": N}
    return ints, lambda name: bias[name] if name in bias else tensor[name[-1]]


def compile_sm90(kernel, shape, dtype="bf16", num_warps=4, num_stages=3, **constexprs):
    """Compile one kernel variant for H100 (sm_90) on a machine without a GPU, specialized as a launch on
    `shape` would be (ints equal to 1 become constants, multiples of 16 and 16-byte aligned pointers
    carry divisibility hints, which is what lets loads vectorize), and return ptxas' resource use:
    {"registers", "spill_stores", "spill_loads", "shared", "wgmma", "mma"}. Needs TRITON_INTERPRET unset."""
    from triton.compiler import ASTSource

    ints, stride = launch_ints(shape)
    first_stride = next(i for i, name in enumerate(kernel.arg_names) if name.startswith("stride_"))
    signature, constants, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif i < first_stride:  # pointers come first; torch allocations are 16-byte aligned
            signature[name] = "*fp32" if name in _FP32_POINTERS else f"*{dtype}"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name == "scale_value":
            signature[name] = "fp32"
        else:
            value = stride(name) if name.startswith("stride_") else ints[name]
            if value == 1:
                signature[name], constants[name] = "constexpr", 1
            else:
                signature[name] = "i32"
                if value % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
    return _ptxas_use(ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs),
                      num_warps, num_stages)


def compile_generic_sm90(kernel, dtype="bf16", num_warps=4, num_stages=3, **constexprs):
    """compile_sm90 for kernels named in the `*_ptr` style (drloc_pairs): tensors `*_ptr` (positions, seed and
    offset int64, targets fp32, the rest `dtype`), every other non-constexpr argument a 32-bit int."""
    from triton.compiler import ASTSource

    pointer_types = {"pos_ptr": "*i64", "targets_ptr": "*fp32", "seed_ptr": "*i64", "offset_ptr": "*i64"}
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointer_types.get(name, f"*{dtype}")
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
    return _ptxas_use(ASTSource(fn=kernel, signature=signature, constexprs=dict(constexprs), attrs=attrs),
                      num_warps, num_stages)


def _ptxas_use(source, num_warps, num_stages):
    """Compile for sm_90 and read ptxas -v: registers, spills, shared memory, tensor-core instructions."""
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas

    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
        ptx.write(compiled.asm["ptx"])
        ptx.flush()
        report = subprocess.run([get_ptxas(90).path, "-v", "--gpu-name=sm_90a", ptx.name, "-o", os.devnull],
                                capture_output=True, text=True, check=True).stderr
    number = lambda pattern: int(m.group(1)) if (m := re.search(pattern, report)) else 0
    ptx_text = compiled.asm["ptx"]
    return {"registers": number(r"Used (\d+) registers"), "spill_stores": number(r"(\d+) bytes spill stores"),
            "spill_loads": number(r"(\d+) bytes spill loads"), "shared": compiled.metadata.shared,
            # tensor-core instructions in the PTX: Hopper wgmma (async warpgroup) and Ampere-style mma.sync
            "wgmma": ptx_text.count("wgmma.mma_async"), "mma": ptx_text.count("mma.sync")}


# (label, pointer dtype, tl.dot input_precision): the three paths a launch can take
PRECISIONS = (("bf16", "bf16", "tf32"), ("fp32 ieee", "fp32", "ieee"), ("fp32 tf32", "fp32", "tf32"))


def sm90_report(shapes=SHAPES, precisions=PRECISIONS, unpruned=False):
    """ptxas registers / spills and tensor-core instruction counts of every autotune candidate of each
    kernel launch of fwd+bwd on `shapes` (bias gradient on for windowed shapes), for bf16 and the fp32 IEEE
    and TF32 paths, then the drloc_pairs kernels: the static half of tuning for H100, no GPU needed.
    unpruned: every candidate the shape admits, spill rule off (the data the rule was derived from)."""
    attn = importlib.import_module("fastvit.kernels.attention")
    tuned = attn._tuned_kernels()
    print("| shape | precision | kernel | BLOCK_M | BLOCK_N | warps | stages | registers | spill stores B | "
          "shared B | wgmma | mma |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in shapes:
        for label, dtype, dot_precision in precisions:
            _report_shape(attn, tuned, shape, label, dtype, dot_precision, unpruned)
    drloc_sm90_report()


def _report_shape(attn, tuned, shape, label, dtype, dot_precision, unpruned):
    common = {"HEAD_DIM": shape.D, "BLOCK_D": attn._pow2_block(shape.D), "HAS_BIAS": bool(shape.nb),
              "PER_HEAD_SCALE": False, "DOT_PRECISION": dot_precision}
    elem = 4 if dtype == "fp32" else 2
    fused = attn._fused_dkdv(shape.N, cuda=True, element_bytes=elem)
    group = attn._ds_group(shape.B // max(shape.nb, 1), shape.N, cuda=True, element_bytes=elem) if shape.nb else 1
    dq = {**common, "STORE_DS": bool(shape.nb), "DS_GROUP": group, "STORE_DSCALE": False, "FUSED_DKDV": fused}
    variants = {"fwd": ("fwd", common), "dq+dkdv" if fused else "dq": ("dq", dq)}
    if not fused:
        variants["dkdv"] = ("dkdv", common)
    for kernel_label, (name, consts) in variants.items():
        args = {"N_Q": shape.N, "N_K": shape.N, "ELEMENT_BYTES": 4 if dtype == "fp32" else 2,
                "SPILL_RULE": not unpruned, **consts}
        for config in tuned[name].early_config_prune(tuned[name].configs, args):
            use = compile_sm90(tuned[name].fn, shape, dtype, num_warps=config.num_warps,
                               num_stages=config.num_stages, **consts, **config.kwargs)
            print(f"| {shape.label} | {label} | {kernel_label} | {config.kwargs['BLOCK_M']} | "
                  f"{config.kwargs['BLOCK_N']} | {config.num_warps} | {config.num_stages} | {use['registers']} | "
                  f"{use['spill_stores']} | {use['shared']} | {use['wgmma']} | {use['mma']} |", flush=True)


def drloc_sm90_report():
    """The same ptxas figures for the L_drloc pair kernels (fastvit.kernels.drloc_pairs) at CUDA block sizes."""
    import triton.language as tl

    drloc = importlib.import_module("fastvit.kernels.drloc_pairs")
    print("\n| drloc_pairs kernel | variant | registers | spill stores B | shared B |")
    print("|---|---|---|---|---|")
    for dtype in ("bf16", "fp32"):
        for sum_halves in (False, True):
            variants = (("fwd", drloc._drloc_pairs_fwd_kernel, {"SAMPLE": True, "USE_ABS": True,
                                                                 "BLOCK_M": 32, "BLOCK_C": 128}),
                        ("bwd", drloc._drloc_pairs_bwd_kernel, {"BLOCK_S": 32, "BLOCK_C": 256}))
            for name, kernel, consts in variants:
                use = compile_generic_sm90(kernel, dtype, num_warps=4,
                                           **consts, SUM_HALVES=sum_halves, ACC=tl.float32)
                variant = f"{dtype}, {'pair sum' if sum_halves else 'concat'}"
                print(f"| {name} | {variant} | {use['registers']} | {use['spill_stores']} | {use['shared']} |",
                      flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-only", action="store_true", help="skip timing even on a GPU")
    parser.add_argument("--sm90-report", action="store_true",
                        help="compile every pruned autotune candidate for H100 (no GPU needed; bf16, fp32 IEEE, "
                             "fp32 TF32, drloc_pairs) and print ptxas registers, spills and wgmma/mma counts")
    parser.add_argument("--unpruned", action="store_true",
                        help="with --sm90-report: also the candidates the spill rule removes")
    args = parser.parse_args(argv)
    if args.sm90_report:
        os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, not interpreted ones
        sm90_report(unpruned=args.unpruned)
        return 0
    print("H100 roofline (989 TFLOP/s dense bf16, 3.35 TB/s), bf16 q/k/v, fp32 bias and LSE:")
    print(roofline_table())
    print()
    if torch.cuda.is_available() and not args.check_only:
        bench_cuda()
        return 0
    # The interpreter must be chosen before triton is imported (fastvit.kernels imports it).
    os.environ.setdefault("TRITON_INTERPRET", "1")
    ok = check_cpu()
    print("no GPU: correctness checked only, no GPU timing was taken")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
