"""L_drloc microbenchmark: the pair kernel vs torch gather, and the head's first layer gather vs project.

Run: python -m benchmarks.drloc [--batch 256] [--pairs 64] [--reps 20]
  CUDA: triton.testing.do_bench of forward and forward+backward, bf16, for
        (a) drloc_pairs: triton kernel (sampling fused) vs torch backend (Philox replay + gather);
        (b) first head layer h = Linear(2C, 512)(pairs): "gather" (drloc_pairs + Linear) vs
            "project" (split Linear over all k = Hg*Wg tokens + drloc_pair_sum).
  CPU:  correctness checks, then the torch-backend timings of (a) and (b) in float32 (wall clock, median);
        no GPU timing is taken there.
Always printed: FLOPs, minimum bytes and H100 roofline times (989 TFLOP/s bf16 dense, 3.35 TB/s HBM3).

     python -m benchmarks.drloc --compile-step [--batch 32]
  torch.compile (inductor) of train.Supervised's step with and without L_drloc (vit_tiny; swin_tiny with
  the multiscale heads): seconds of the first (compiling) step, then median step ms compiled vs eager.
"""

import argparse
import time

import torch
from torch import nn

from fastvit.kernels import reference
from fastvit.kernels.drloc_pairs import drloc_pair_sum, drloc_pairs, philox_positions
from fastvit.objectives.drloc import HIDDEN, Drloc, DrlocHead

# (name, Hg, Wg, C): final grids of Swin-T at 224 px, small-image Swin (last stage), 8x8 tokens of 192
CONFIGS = [("7x7x768", 7, 7, 768), ("4x4x384", 4, 4, 384), ("8x8x192", 8, 8, 192)]
H100_FLOPS = 989e12  # bf16 dense tensor-core peak
H100_BYTES = 3.35e12  # HBM3 bandwidth


# --- roofline -------------------------------------------------------------------------------------------
def roofline(B, Hg, Wg, C, m, elem=2):
    """{name: (flops, min_bytes)} per step; every tensor touched once at `elem` bytes (bf16), indices int64.

    A gather reads each distinct source row at least once: min(k, 2m) rows of an image (k = Hg*Wg),
    min(k, m) rows of each half for the pair sum.
    """
    k, H = Hg * Wg, HIDDEN
    index_bytes = B * m * (4 * 8 + 2 * 4)  # positions int64 + targets float32
    src_rows = B * min(k, 2 * m)
    pairs = B * m * 2 * C * elem
    hidden = B * m * H * elem
    w1 = 2 * C * H * elem
    out = {
        "kernel fwd": (0, src_rows * C * elem + pairs + index_bytes),
        "kernel bwd": (0, pairs + B * m * 4 * 8 + B * k * C * elem),
    }
    # gather: pairs -> Linear;  backward: dX = dh W (into the pair kernel's bwd), dW = dh^T X
    g_fwd = (2 * B * m * 2 * C * H, out["kernel fwd"][1] + pairs + w1 + hidden)
    g_bwd = (2 * g_fwd[0], hidden + 2 * pairs + w1 + out["kernel bwd"][1])
    # project: grid -> (B, k, 2H) -> pair-sum gather;  backward mirrors it
    proj = B * k * 2 * H * elem
    p_fwd = (2 * B * k * C * 2 * H, B * k * C * elem + w1 + proj + B * 2 * min(k, m) * H * elem + hidden + index_bytes)
    p_bwd = (2 * p_fwd[0], hidden + B * m * 4 * 8 + 2 * proj + B * k * C * elem * 2 + w1)
    out["gather fwd"], out["project fwd"] = g_fwd, p_fwd
    out["gather fwd+bwd"] = (g_fwd[0] + g_bwd[0], g_fwd[1] + g_bwd[1])
    out["project fwd+bwd"] = (p_fwd[0] + p_bwd[0], p_fwd[1] + p_bwd[1])
    return out


def print_roofline(B, m):
    print(f"\nH100 roofline (B={B}, m={m}, bf16): time = max(FLOPs / 989 TFLOP/s, bytes / 3.35 TB/s)")
    print(f"{'grid':<9} {'step':<16} {'GFLOP':>8} {'min MB':>8} {'us':>8}  bound")
    for name, Hg, Wg, C in CONFIGS:
        for step, (flops, nbytes) in roofline(B, Hg, Wg, C, m).items():
            t_c, t_m = flops / H100_FLOPS, nbytes / H100_BYTES
            print(
                f"{name:<9} {step:<16} {flops / 1e9:8.2f} {nbytes / 1e6:8.1f} {max(t_c, t_m) * 1e6:8.1f}  "
                f"{'compute' if t_c > t_m else 'memory'}"
            )


# --- correctness ----------------------------------------------------------------------------------------
def check_correctness(device):
    """Small-size checks of the paths being timed; raises AssertionError on a mismatch."""
    gen = torch.Generator().manual_seed(0)
    grid = torch.randn(3, 4, 5, 24, generator=gen, dtype=torch.float64).to(device)
    positions = philox_positions(3, 4, 5, 16, seed=1, offset=2, device=device)
    for backend in ["torch"] + (["triton"] if device.type == "cuda" else []):
        pairs, targets, pos = drloc_pairs(grid.float(), 16, seed=1, offset=2, backend=backend)
        ref_pairs, ref_targets = reference.drloc_pairs(grid.float(), positions)
        assert torch.equal(pos, positions) and torch.equal(pairs, ref_pairs) and torch.equal(targets, ref_targets)
    losses = []
    for path in ("gather", "project"):
        drloc = Drloc([24], num_pairs=16, grid_sizes=[(4, 5)], path=path).double().to(device)
        torch.manual_seed(0)
        for p in drloc.parameters():
            torch.nn.init.normal_(p, std=0.2)
        losses.append(drloc([grid], seed=1, offset=2))
    assert torch.allclose(losses[0], losses[1], rtol=1e-10), losses
    print(f"correctness on {device.type}: positions, pairs, targets exact; gather == project loss (float64) OK")


# --- timing ----------------------------------------------------------------------------------------------
def _cpu_ms(cases, reps):
    """{label: ms}: the minimum over rounds that run every case once, interleaved, so that load from
    other processes on a shared CPU hits every case alike; the minimum is the least-disturbed run."""
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(reps + 1):  # the first round warms up
        for label, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            best[label] = min(best[label], time.perf_counter() - t0)
    return {label: t * 1e3 for label, t in best.items()}


def _cuda_ms(cases, reps):
    from triton.testing import do_bench

    return {label: do_bench(fn, rep=max(reps, 25), return_mode="median") for label, fn in cases.items()}


def _cases(B, Hg, Wg, C, m, device, dtype, kernel_backends):
    """{label: (forward fn, forward+backward fn)} for one grid config."""
    gen = torch.Generator().manual_seed(0)
    grid = torch.randn(B, Hg, Wg, C, generator=gen).to(device, dtype).requires_grad_()
    head = DrlocHead(C, grid_size=(Hg, Wg)).to(device, dtype)
    d_pairs = torch.randn(B, m, 2 * C, generator=gen).to(device, dtype)
    d_hidden = torch.randn(B, m, HIDDEN, generator=gen).to(device, dtype)
    cases = {}
    for backend in kernel_backends:
        def pairs_fwd(backend=backend):
            return drloc_pairs(grid, m, seed=0, offset=1, backend=backend)[0]

        cases[f"pairs[{backend}]"] = (pairs_fwd, lambda f=pairs_fwd: f().backward(d_pairs))

    backend = kernel_backends[0]

    def gather_fwd():
        return head.fc1(drloc_pairs(grid, m, seed=0, offset=1, backend=backend)[0])

    def project_fwd():
        hidden = drloc_pair_sum(head.project(grid), m, seed=0, offset=1, backend=backend)[0]
        return hidden + head.fc1.bias

    for label, fwd in (("gather", gather_fwd), ("project", project_fwd)):
        cases[f"fc1 {label}[{backend}]"] = (fwd, lambda f=fwd: f().backward(d_hidden))
    return cases


def run_timings(B, m, reps, device):
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    timer = _cuda_ms if cuda else _cpu_ms
    backends = ["triton", "torch"] if cuda else ["torch"]
    stat = "do_bench median" if cuda else "min of interleaved rounds"
    print(f"\ntimings on {device.type} ({dtype}, B={B}, m={m}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads), ms, {stat}")
    print(f"{'grid':<9} {'case':<22} {'fwd':>9} {'fwd+bwd':>9}")
    for name, Hg, Wg, C in CONFIGS:
        cases = _cases(B, Hg, Wg, C, m, device, dtype, backends)
        with torch.no_grad():
            t_fwd = timer({label: fwd for label, (fwd, _) in cases.items()}, reps)
        t_full = timer({label: full for label, (_, full) in cases.items()}, reps)
        for label in cases:
            print(f"{name:<9} {label:<22} {t_fwd[label]:9.3f} {t_full[label]:9.3f}")


def _time_step(objective, x, targets, steps):
    """(seconds of the first compiled step, {"compiled"|"eager": median ms}) of one Supervised objective."""
    from fastvit.train import Supervised

    torch._dynamo.reset()
    compiled = torch.compile(objective, fullgraph=True)

    def step(fn, i):
        loss, _ = fn(x, targets, **Supervised.step_inputs(0.5, 0, i, x.device))
        loss.backward()
        objective.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step(compiled, 0)
    compile_s = time.perf_counter() - t0
    times = {"compiled": [], "eager": []}
    for i in range(1, steps + 1):  # interleaved: the machine's load hits both alike
        for name, fn in (("compiled", compiled), ("eager", objective)):
            t0 = time.perf_counter()
            step(fn, i)
            times[name].append(time.perf_counter() - t0)
    return compile_s, {k: 1e3 * sorted(v)[len(v) // 2] for k, v in times.items()}


def compile_step_timings(B, m, steps):
    """First-step (compile) seconds and median step ms, compiled vs eager, of Supervised with/without drloc."""
    from fastvit import hostmem, models
    from fastvit.train import Supervised

    hostmem.retain_freed_memory()  # as train.run on a CPU (else eager re-faults its activations each step)
    print(f"\ntorch.compile of the training step (inductor, B={B}, m={m}, 32 px, fp32, torch {torch.__version__})")
    print(f"{'arch':<10} {'drloc':<11} {'compile s':>10} {'compiled ms':>12} {'eager ms':>9}")
    probe = torch.zeros(1, 3, 32, 32)
    # a throwaway compile first: inductor's one-time start-up would otherwise land on the first row
    warm = nn.Linear(4, 4)
    torch.compile(lambda t: warm(t).relu().sum())(torch.ones(2, 4, requires_grad=True)).backward()
    for arch, multiscale in (("vit_tiny", False), ("swin_tiny", True)):
        for with_drloc in (False, True):
            torch.manual_seed(0)
            model = models.create(arch, img_size=32, num_classes=10)
            drloc = None
            if with_drloc:
                grids = model.forward_stages(probe) if multiscale else [model.forward_features(probe)[1]]
                sizes = [tuple(g.shape[1:3]) for g in grids]
                drloc = Drloc([g.shape[-1] for g in grids], num_pairs=m, grid_sizes=sizes)
            objective = Supervised(model, drloc, multiscale and with_drloc)
            x, targets = torch.randn(B, 3, 32, 32), torch.randint(0, 10, (B,))
            compile_s, med = _time_step(objective, x, targets, steps)
            label = ("multiscale" if multiscale else "l1") if with_drloc else "none"
            print(f"{arch:<10} {label:<11} {compile_s:10.1f} {med['compiled']:12.1f} {med['eager']:9.1f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="images per step (B)")
    parser.add_argument("--pairs", type=int, default=64, help="pairs per image (m)")
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per case")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--compile-step", action="store_true", help="only time torch.compile of the step")
    parser.add_argument("--steps", type=int, default=7, help="timed steps per side with --compile-step")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile_step:
        compile_step_timings(args.batch, args.pairs, args.steps)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_correctness(device)
    run_timings(args.batch, args.pairs, args.reps, device)
    if device.type != "cuda":
        print("no GPU here: no GPU timing was taken (the roofline below is the GPU estimate)")
    print_roofline(args.batch, args.pairs)


if __name__ == "__main__":
    main()
