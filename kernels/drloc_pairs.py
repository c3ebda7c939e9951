"""L_drloc pair sampling: draw token positions, gather the pair embeddings, emit the offset targets.

Layers (one op, one file): `@triton.jit` kernels -> host launchers (`drloc_pairs_forward`,
`drloc_pairs_backward`) -> `torch.library` custom ops (fake impl + autograd, so `torch.compile` traces
them) -> the public `drloc_pairs` (backend dispatch). The plain-torch ground truth is
`fastvit.kernels.reference.drloc_pairs`.

seed and offset may be Python ints or int64 0-dim tensors on the grid's device; a compiled training
step passes tensors, so a new step is new data, not a new graph (and nothing is read back to the host).

Random stream: Philox4x32-10 (the generator behind `tl.random`), keyed by `seed` (64 bits), with the
counter (pair index b*m + j, offset low 32 bits, offset high 32 bits, 0). One counter yields the four
words (r1, c1, r2, c2); a word u becomes a coordinate as floor(u * size / 2^32) (bias < size / 2^32).
`philox_positions` replays the same stream with int64 torch ops, so the torch and triton backends draw
identical positions for the same (seed, offset) on every device, and a (seed, offset) never depends on
how many draws came before (exact resume). Under torch.compile the torch backend's draw is one opaque
custom op (`fastvit::drloc_positions`): inlined, its ~300 chained int64 ops, each value read twice per
round, make inductor's pointwise lowering re-trace shared subexpressions, a cost that roughly doubles
per Philox round (measured in NOTES: 10 rounds do not lower within 10 minutes).

Backward: a grid cell's gradient is the sum of the pair-gradient rows whose position is that cell. Each
program owns one (image, cell, channel block) and walks every pair of its image in a fixed order, so the
result is deterministic (no atomics) and repeated positions add up.
"""

import os

import torch

from fastvit.errors import UserError
from fastvit.kernels import reference

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is Linux-only; the torch backend still works
    triton = None

BACKENDS = ("triton", "torch")
_MASK32 = 0xFFFFFFFF
# Philox4x32 constants (Salmon et al. 2011), the ones tl.random uses for 32-bit counters.
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_PHILOX_ROUNDS = 10


# ---------------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _drloc_pairs_fwd_kernel(
        grid_ptr,  # (B, Hg, Wg, G) any strides
        pos_ptr,  # (B, m, 4) int64 contiguous (r1, c1, r2, c2): written when SAMPLE, read otherwise
        out_ptr,  # (B, m, OUT) contiguous; OUT = 2G (concat) or G/2 (SUM_HALVES)
        targets_ptr,  # (B, m, 2) float32 contiguous
        stride_gb, stride_gh, stride_gw, stride_gc,
        seed_ptr, offset_ptr,  # () int64 each: the Philox key and the counter's step words
        Hg, Wg, m, width,
        SAMPLE: tl.constexpr, USE_ABS: tl.constexpr, SUM_HALVES: tl.constexpr, ACC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        # ACC: the accumulation dtype, float32 (float64 for float64 grids)
        # width: channels written per position (G for concat, G/2 for SUM_HALVES); OUT = 2 * width or width
        pid_b = tl.program_id(0).to(tl.int64)
        pid_m = tl.program_id(1)
        pid_c = tl.program_id(2)
        j = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) pair index within the image
        mask_m = j < m
        pair = pid_b * m + j  # (BLOCK_M,) int64 global pair index, the Philox counter's first word
        if SAMPLE:
            seed = tl.load(seed_ptr)
            offset = tl.load(offset_ptr)
            offset_lo = offset & 0xFFFFFFFF
            offset_hi = (offset >> 32) & 0xFFFFFFFF
            zero = tl.zeros([BLOCK_M], dtype=tl.int64)
            u0, u1, u2, u3 = tl.random.philox(
                seed, pair.to(tl.uint32), (zero + offset_lo).to(tl.uint32),
                (zero + offset_hi).to(tl.uint32), zero.to(tl.uint32),
            )
            # coordinate = floor(u * size / 2^32): uniform up to a bias of size / 2^32
            r1 = ((u0.to(tl.uint64) * Hg) >> 32).to(tl.int64)
            c1 = ((u1.to(tl.uint64) * Wg) >> 32).to(tl.int64)
            r2 = ((u2.to(tl.uint64) * Hg) >> 32).to(tl.int64)
            c2 = ((u3.to(tl.uint64) * Wg) >> 32).to(tl.int64)
            first_block = mask_m & (pid_c == 0)
            tl.store(pos_ptr + pair * 4 + 0, r1, mask=first_block)
            tl.store(pos_ptr + pair * 4 + 1, c1, mask=first_block)
            tl.store(pos_ptr + pair * 4 + 2, r2, mask=first_block)
            tl.store(pos_ptr + pair * 4 + 3, c2, mask=first_block)
        else:
            r1 = tl.load(pos_ptr + pair * 4 + 0, mask=mask_m, other=0)
            c1 = tl.load(pos_ptr + pair * 4 + 1, mask=mask_m, other=0)
            r2 = tl.load(pos_ptr + pair * 4 + 2, mask=mask_m, other=0)
            c2 = tl.load(pos_ptr + pair * 4 + 3, mask=mask_m, other=0)

        # targets: |p1 - p2| per axis, or p1 - p2 + (size - 1) so that classes start at 0
        dr = (r1 - r2).to(tl.float32)
        dc = (c1 - c2).to(tl.float32)
        if USE_ABS:
            dr = tl.abs(dr)
            dc = tl.abs(dc)
        else:
            dr = dr + (Hg - 1)
            dc = dc + (Wg - 1)
        write_targets = mask_m & (pid_c == 0)
        tl.store(targets_ptr + pair * 2 + 0, dr, mask=write_targets)
        tl.store(targets_ptr + pair * 2 + 1, dc, mask=write_targets)

        chans = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)  # (BLOCK_C,)
        mask = mask_m[:, None] & (chans < width)[None, :]  # (BLOCK_M, BLOCK_C)
        src1 = grid_ptr + pid_b * stride_gb + r1 * stride_gh + c1 * stride_gw  # (BLOCK_M,)
        src2 = grid_ptr + pid_b * stride_gb + r2 * stride_gh + c2 * stride_gw
        if SUM_HALVES:
            # out[j] = grid[p1, :width] + grid[p2, width:]  (the two halves of a split Linear)
            e1 = tl.load(src1[:, None] + chans[None, :] * stride_gc, mask=mask, other=0.0)
            e2 = tl.load(src2[:, None] + (chans + width)[None, :] * stride_gc, mask=mask, other=0.0)
            total = e1.to(ACC) + e2.to(ACC)
            dst = out_ptr + pair[:, None] * width + chans[None, :]
            tl.store(dst, total.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            # out[j] = concat(grid[p1], grid[p2]): a pure copy, exact in every dtype
            e1 = tl.load(src1[:, None] + chans[None, :] * stride_gc, mask=mask, other=0.0)
            e2 = tl.load(src2[:, None] + chans[None, :] * stride_gc, mask=mask, other=0.0)
            dst = out_ptr + pair[:, None] * (2 * width) + chans[None, :]
            tl.store(dst, e1, mask=mask)
            tl.store(dst + width, e2, mask=mask)

    @triton.jit
    def _drloc_pairs_bwd_kernel(
        dout_ptr,  # (B, m, OUT) contiguous, the gradient of the forward's output
        pos_ptr,  # (B, m, 4) int64 contiguous
        dgrid_ptr,  # (B, Hg * Wg, G) contiguous
        Wg, HW, m, G,
        SUM_HALVES: tl.constexpr, ACC: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        # dgrid[b, cell, c] = sum_j [p1_j == cell] dout[b, j, col1(c)] + [p2_j == cell] dout[b, j, col2(c)]
        #   concat:     col1(c) = c,                     col2(c) = G + c
        #   SUM_HALVES: col1(c) = c only for c < G/2,    col2(c) = c - G/2 only for c >= G/2
        pid_b = tl.program_id(0).to(tl.int64)
        cell = tl.program_id(1)
        pid_c = tl.program_id(2)
        chans = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)  # (BLOCK_C,)
        mask_c = chans < G
        if SUM_HALVES:
            half = G // 2
            out_width = half
            use1 = mask_c & (chans < half)
            use2 = mask_c & (chans >= half)
            col1 = chans
            col2 = chans - half
        else:
            out_width = 2 * G
            use1 = mask_c
            use2 = mask_c
            col1 = chans
            col2 = chans + G
        acc = tl.zeros([BLOCK_C], dtype=ACC)
        # fixed walk over the pairs: the sum order never depends on scheduling, hence deterministic
        for start in range(0, m, BLOCK_S):
            j = start + tl.arange(0, BLOCK_S)  # (BLOCK_S,)
            mask_s = j < m
            pair = pid_b * m + j
            r1 = tl.load(pos_ptr + pair * 4 + 0, mask=mask_s, other=0)
            c1 = tl.load(pos_ptr + pair * 4 + 1, mask=mask_s, other=0)
            r2 = tl.load(pos_ptr + pair * 4 + 2, mask=mask_s, other=0)
            c2 = tl.load(pos_ptr + pair * 4 + 3, mask=mask_s, other=0)
            hit1 = mask_s & (r1 * Wg + c1 == cell)
            hit2 = mask_s & (r2 * Wg + c2 == cell)
            # masked-off rows cost no memory traffic: only the pairs that hit this cell are read
            row = dout_ptr + pair[:, None] * out_width  # (BLOCK_S, 1)
            d1 = tl.load(row + col1[None, :], mask=hit1[:, None] & use1[None, :], other=0.0)
            d2 = tl.load(row + col2[None, :], mask=hit2[:, None] & use2[None, :], other=0.0)
            acc += tl.sum(d1.to(ACC), axis=0) + tl.sum(d2.to(ACC), axis=0)
        dst = dgrid_ptr + (pid_b * HW + cell) * G + chans
        tl.store(dst, acc.to(dgrid_ptr.dtype.element_ty), mask=mask_c)


# ---------------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------------
def _acc_dtype(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _out_width(channels: int, sum_halves: bool) -> int:
    return channels // 2 if sum_halves else 2 * channels


def drloc_pairs_forward(grid, positions, num_pairs, seed, offset, use_abs, sum_halves):
    """Launch the forward kernel (positions None: sample them in it). Returns (out, targets, positions).

    seed, offset: int64 0-dim tensors on the grid's device, read by the kernel (no host sync).
    """
    B, Hg, Wg, G = grid.shape
    m = num_pairs
    width = G // 2 if sum_halves else G
    out = torch.empty(B, m, _out_width(G, sum_halves), device=grid.device, dtype=grid.dtype)
    targets = torch.empty(B, m, 2, device=grid.device, dtype=torch.float32)
    sample = positions is None
    if sample:
        positions = torch.empty(B, m, 4, device=grid.device, dtype=torch.int64)
    else:
        positions = positions.to(torch.int64).contiguous().clone()  # an op output may not alias an input
    if B * m == 0:
        return out, targets, positions
    # the interpreter (CPU) pays per program, not per element: fewer, larger blocks there
    BLOCK_M = min(32 if grid.is_cuda else 512, triton.next_power_of_2(m))
    BLOCK_C = min(128, triton.next_power_of_2(max(width, 1)))
    launch = (B, triton.cdiv(m, BLOCK_M), max(1, triton.cdiv(width, BLOCK_C)))
    _drloc_pairs_fwd_kernel[launch](
        grid, positions, out, targets,
        *grid.stride(),
        seed, offset, Hg, Wg, m, width,
        SAMPLE=sample, USE_ABS=use_abs, SUM_HALVES=sum_halves, ACC=_acc_dtype(grid.dtype),
        BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C,
    )
    return out, targets, positions


def drloc_pairs_backward(grad_out, positions, grid_shape, sum_halves):
    """Launch the backward kernel: the (B, Hg, Wg, G) gradient of the grid, deterministic."""
    B, Hg, Wg, G = grid_shape
    m = positions.shape[1]
    dgrid = torch.empty(B, Hg, Wg, G, device=grad_out.device, dtype=grad_out.dtype)
    if dgrid.numel() == 0:
        return dgrid
    if m == 0:
        return dgrid.zero_()
    BLOCK_S = min(32 if grad_out.is_cuda else 512, triton.next_power_of_2(m))
    BLOCK_C = min(256, triton.next_power_of_2(G))
    launch = (B, Hg * Wg, triton.cdiv(G, BLOCK_C))
    _drloc_pairs_bwd_kernel[launch](
        grad_out.contiguous(), positions, dgrid,
        Wg, Hg * Wg, m, G,
        SUM_HALVES=sum_halves, ACC=_acc_dtype(grad_out.dtype), BLOCK_S=BLOCK_S, BLOCK_C=BLOCK_C,
    )
    return dgrid


# ---------------------------------------------------------------------------------------------------
# Custom ops (torch.compile sees opaque nodes with known output shapes; autograd calls the bwd kernel)
# ---------------------------------------------------------------------------------------------------
@torch.library.custom_op("fastvit::drloc_pairs", mutates_args=())
def _drloc_pairs_op(
    grid: torch.Tensor, positions: torch.Tensor | None, num_pairs: int, seed: torch.Tensor,
    offset: torch.Tensor, use_abs: bool, sum_halves: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return drloc_pairs_forward(grid, positions, num_pairs, seed, offset, use_abs, sum_halves)


@_drloc_pairs_op.register_fake
def _(grid, positions, num_pairs, seed, offset, use_abs, sum_halves):
    B, _, _, G = grid.shape
    out = grid.new_empty(B, num_pairs, _out_width(G, sum_halves))
    targets = grid.new_empty(B, num_pairs, 2, dtype=torch.float32)
    return out, targets, grid.new_empty(B, num_pairs, 4, dtype=torch.int64)


@torch.library.custom_op("fastvit::drloc_pairs_backward", mutates_args=())
def _drloc_pairs_backward_op(
    grad_out: torch.Tensor, positions: torch.Tensor, Hg: int, Wg: int, channels: int, sum_halves: bool
) -> torch.Tensor:
    return drloc_pairs_backward(grad_out, positions, (grad_out.shape[0], Hg, Wg, channels), sum_halves)


@_drloc_pairs_backward_op.register_fake
def _(grad_out, positions, Hg, Wg, channels, sum_halves):
    return grad_out.new_empty(grad_out.shape[0], Hg, Wg, channels)


def _setup_context(ctx, inputs, output):
    grid, _, _, _, _, _, sum_halves = inputs
    _, targets, positions = output
    ctx.mark_non_differentiable(targets, positions)
    ctx.save_for_backward(positions)
    ctx.grid_shape = tuple(grid.shape)
    ctx.grid_dtype = grid.dtype
    ctx.sum_halves = sum_halves


def _backward(ctx, grad_out, _grad_targets, _grad_positions):
    (positions,) = ctx.saved_tensors
    _, Hg, Wg, G = ctx.grid_shape
    dgrid = _drloc_pairs_backward_op(grad_out.to(ctx.grid_dtype), positions, Hg, Wg, G, ctx.sum_halves)
    return dgrid, None, None, None, None, None, None


_drloc_pairs_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------
# Torch backend: the same Philox stream with int64 tensor ops
# ---------------------------------------------------------------------------------------------------
def _mul_hi_lo(a, k: int):
    """(high, low) 32-bit words of a * k for a uint32 held in int64 and a 32-bit constant k, overflow-free."""
    t_lo = (a & 0xFFFF) * k  # < 2^48
    t_hi = (a >> 16) * k  # < 2^48; a * k = t_hi * 2^16 + t_lo
    hi = (t_hi + (t_lo >> 16)) >> 16
    lo = (((t_hi & 0xFFFF) << 16) + t_lo) & _MASK32
    return hi, lo


def philox4x32(c0, c1, c2, c3, seed):
    """Philox4x32-10 on uint32 words held in int64 tensors, keyed by a 64-bit seed: 4 output words.

    seed: an int or an int64 0-dim tensor (its two's-complement bits are the key).
    """
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(_PHILOX_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(c2, _PHILOX_ROUND_B)
        hi_a, lo_a = _mul_hi_lo(c0, _PHILOX_ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _PHILOX_KEY_A) & _MASK32, (k1 + _PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def philox_positions(B, Hg, Wg, num_pairs, seed, offset, device=None):
    """(B, m, 4) int64 positions (r1, c1, r2, c2): the exact stream the triton kernel draws.

    seed, offset: ints or int64 0-dim tensors on `device`. Plain torch ops: call it eagerly (under
    torch.compile use `drloc_positions`, see the module docstring).
    """
    c0 = torch.arange(B * num_pairs, device=device, dtype=torch.int64)  # the pair index b*m + j
    zero = torch.zeros_like(c0)
    c1 = zero + (offset & _MASK32)
    c2 = zero + ((offset >> 32) & _MASK32)
    words = philox4x32(c0, c1, c2, zero, seed)
    # u < 2^32 and size < 2^31, so u * size fits in int64
    coords = [(u * size) >> 32 for u, size in zip(words, (Hg, Wg, Hg, Wg), strict=True)]
    return torch.stack(coords, dim=-1).view(B, num_pairs, 4)


@torch.library.custom_op("fastvit::drloc_positions", mutates_args=())
def drloc_positions(
    seed: torch.Tensor, offset: torch.Tensor, batch: int, Hg: int, Wg: int, num_pairs: int
) -> torch.Tensor:
    """`philox_positions` as one opaque op: (batch, num_pairs, 4) int64 on the device of the int64 seed."""
    return philox_positions(batch, Hg, Wg, num_pairs, seed, offset, seed.device)


@drloc_positions.register_fake
def _(seed, offset, batch, Hg, Wg, num_pairs):
    return seed.new_empty(batch, num_pairs, 4, dtype=torch.int64)


def _torch_pairs(grid, positions, num_pairs, seed, offset, use_abs, sum_halves):
    B, Hg, Wg, G = grid.shape
    if positions is None:
        positions = drloc_positions(seed, offset, B, Hg, Wg, num_pairs)
    gather = reference.drloc_pair_sum if sum_halves else reference.drloc_pairs
    out, targets = gather(grid, positions, use_abs)
    return out, targets, positions


# ---------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------
def _pick_backend(grid, backend):
    if backend is None:
        return "triton" if grid.is_cuda and triton is not None else "torch"
    if backend not in BACKENDS:
        raise UserError(f"unknown drloc_pairs backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "triton":
        if triton is None:
            raise UserError("drloc_pairs backend 'triton' needs the triton package; use backend 'torch'")
        if not grid.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise UserError(
                f"drloc_pairs backend 'triton' needs a CUDA tensor (got {grid.device}) or TRITON_INTERPRET=1 "
                "set before triton is imported; use backend 'torch'"
            )
    return backend


def _stream_tensor(value, name, grid):
    """seed or offset as the int64 0-dim tensor on the grid's device that the ops read."""
    if isinstance(value, torch.Tensor):
        # a tensor's value is not checked: that would read it back to the host every step
        if value.shape != () or value.dtype != torch.int64 or value.device != grid.device:
            raise UserError(
                f"drloc_pairs {name} must be an int or an int64 0-dim tensor on {grid.device}, got "
                f"{value.dtype} of shape {tuple(value.shape)} on {value.device}"
            )
        return value
    value = int(value)
    if not 0 <= value < 2**63:
        raise UserError(f"drloc_pairs seed and offset must lie in [0, 2^63), got {name}={value}")
    return torch.full((), value, dtype=torch.int64, device=grid.device)  # a fill, not a host copy


def _check_inputs(grid, num_pairs, positions):
    if grid.dim() != 4 or min(grid.shape[1:3]) < 1:
        raise UserError(
            f"drloc_pairs expects a grid of shape (B, Hg, Wg, C) with Hg, Wg >= 1, got {tuple(grid.shape)}"
        )
    if not grid.is_floating_point():
        raise UserError(f"drloc_pairs expects a floating-point grid, got {grid.dtype}")
    B, Hg, Wg, _ = grid.shape
    if positions is None:
        if num_pairs < 1 or B * num_pairs >= 2**32:
            raise UserError(
                f"drloc_pairs num_pairs must be >= 1 with batch * num_pairs < 2^32, got {num_pairs}"
            )
        return
    if positions.shape != (B, num_pairs, 4) or positions.dtype.is_floating_point:
        raise UserError(
            f"drloc_pairs positions must be an integer tensor of shape (B, num_pairs, 4) = "
            f"{(B, num_pairs, 4)}, got {tuple(positions.shape)} {positions.dtype}"
        )
    if positions.device != grid.device:
        raise UserError(f"drloc_pairs positions are on {positions.device}, the grid on {grid.device}")
    limits = torch.tensor([Hg, Wg, Hg, Wg], device=positions.device)
    if bool(((positions < 0) | (positions >= limits)).any()):  # a host sync, only when positions are given
        raise UserError(f"drloc_pairs positions must satisfy 0 <= r < {Hg} and 0 <= c < {Wg}")


def drloc_pairs(grid, num_pairs, *, seed, offset=0, use_abs=True, positions=None, backend=None):
    """Sample `num_pairs` token pairs per image of a (B, Hg, Wg, C) grid; gather them and their offsets.

    Positions are drawn uniformly with replacement (the two ends of a pair may coincide) from the Philox
    stream keyed by `seed` at counter `offset` (e.g. the global step), or taken from `positions`.
    seed, offset: ints in [0, 2^63) or int64 0-dim tensors on the grid's device (what a compiled step
    passes: no recompile per step).

    Returns:
      pairs (B, m, 2C), grid dtype: concat(grid[b, r1, c1], grid[b, r2, c2]); differentiable w.r.t. grid.
      targets (B, m, 2) float32, per axis (rows, cols): |p1 - p2| if use_abs else p1 - p2 + (size - 1).
      positions (B, m, 4) int64: (r1, c1, r2, c2).
    backend: "triton" (CUDA tensors, or CPU under TRITON_INTERPRET=1), "torch" (any device);
      None picks triton on CUDA and torch otherwise. Both draw the same positions.

    Plain torch equivalent (given positions):
      flat = grid.flatten(1, 2); i = r * Wg + c
      pairs = cat([flat[b, i1], flat[b, i2]], -1); targets = (p1 - p2).abs() per axis
    """
    return _dispatch(grid, num_pairs, seed, offset, use_abs, positions, backend, sum_halves=False)


def drloc_pair_sum(grid, num_pairs, *, seed, offset=0, use_abs=True, positions=None, backend=None):
    """Like `drloc_pairs`, for a grid whose channels are two halves [A | B] of width C/2 each.

    Returns out (B, m, C/2) = A[p1] + B[p2] (accumulated in float32), targets, positions: with A = x W1a^T
    and B = x W1b^T, out is the first Linear of the drloc head applied to concat(x[p1], x[p2]) (minus
    its bias), computed from k^2 projected tokens instead of 2m gathered ones. Same stream, same targets
    and positions as `drloc_pairs` for the same (seed, offset).
    """
    if grid.dim() == 4 and grid.shape[-1] % 2:
        raise UserError(f"drloc_pair_sum needs an even channel count (two halves), got {grid.shape[-1]}")
    return _dispatch(grid, num_pairs, seed, offset, use_abs, positions, backend, sum_halves=True)


def _dispatch(grid, num_pairs, seed, offset, use_abs, positions, backend, sum_halves):
    num_pairs = int(num_pairs)
    _check_inputs(grid, num_pairs, positions)
    seed, offset = _stream_tensor(seed, "seed", grid), _stream_tensor(offset, "offset", grid)
    if _pick_backend(grid, backend) == "torch":
        return _torch_pairs(grid, positions, num_pairs, seed, offset, use_abs, sum_halves)
    return _drloc_pairs_op(grid, positions, num_pairs, seed, offset, bool(use_abs), sum_halves)
