"""drloc_pairs: the Triton kernel (interpreter on CPU) against the plain-torch reference."""

import os
import re
import sys

import pytest
import torch
from scipy.stats import chisquare

from fastvit.errors import UserError
from fastvit.kernels import drloc_pairs, reference
from fastvit.kernels.drloc_pairs import drloc_pair_sum, drloc_positions, philox4x32, philox_positions

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="the triton backend runs on CPU only in the interpreter"
)


def assert_within_sum_bound(grad, grad64, abs_sum, terms):
    """dgrid is a sum of at most `terms` upstream rows per cell, accumulated in fp32 (float64 for float64)
    and rounded to grad's dtype, whose upstream was rounded to it too: |error| <= (2 u + terms u_acc) Σ|terms|
    (u: unit roundoff of grad's dtype; Σ|terms| from the float64 backward of |upstream|). Holds for any
    summation order, so for every CPU's and GPU's reduction."""
    u = torch.finfo(grad.dtype).eps / 2
    u_acc = torch.finfo(torch.float64 if grad.dtype == torch.float64 else torch.float32).eps / 2
    bound = 2 * (2 * u + terms * u_acc) * abs_sum  # slack 2
    excess = (grad.double() - grad64).abs() - bound
    assert (excess <= 0).all(), f"{(excess > 0).sum().item()} elements over the bound, worst by {excess.max():.2e}"


def _grid(shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _random_positions(B, Hg, Wg, m, seed=1):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, Hg, (B, m, 2), generator=gen)
    cols = torch.randint(0, Wg, (B, m, 2), generator=gen)
    return torch.stack([rows[..., 0], cols[..., 0], rows[..., 1], cols[..., 1]], dim=-1)  # (B, m, 4)


def _repeating_positions(B, Hg, Wg, m):
    """Half the pairs hit cell (0, 0) from both ends; the rest includes the last row and column."""
    pos = _random_positions(B, Hg, Wg, m)
    pos[:, : m // 2] = 0
    pos[:, -1] = torch.tensor([Hg - 1, Wg - 1, Hg - 1, 0])
    return pos


# --- the random stream -------------------------------------------------------------------------------
def test_philox_matches_random123_known_answers():
    # Random123 kat_vectors, philox4x32_10: (counter, key) -> output
    cases = [
        ((0, 0, 0, 0), 0, (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, 0xFFFFFFFFFFFFFFFF, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), 0x299F31D0A4093822,
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for counter, key, expected in cases:
        words = philox4x32(*(torch.tensor([c]) for c in counter), key)
        assert tuple(int(w) for w in words) == expected


@pytest.mark.parametrize("seed,offset", [(0, 0), (12345, 77), (2**62 + 5, 2**40 + 3)])
def test_triton_draws_the_torch_stream(seed, offset):
    grid = _grid((3, 4, 7, 2))
    a = drloc_pairs(grid, 40, seed=seed, offset=offset, backend="triton")
    b = drloc_pairs(grid, 40, seed=seed, offset=offset, backend="torch")
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert torch.equal(b[2], philox_positions(3, 4, 7, 40, seed, offset))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_positions_reproducible_and_offset_dependent(backend):
    grid = _grid((2, 5, 6, 1))
    draw = lambda seed, offset: drloc_pairs(grid, 64, seed=seed, offset=offset, backend=backend)[2]
    assert torch.equal(draw(7, 3), draw(7, 3))
    # consecutive offsets must not be shifted copies of one stream
    for other in (draw(7, 4), draw(8, 3)):
        assert (other != draw(7, 3)).any(dim=-1).float().mean() > 0.8
    assert not torch.equal(draw(7, 4)[:, 1:], draw(7, 3)[:, :-1])


def test_positions_uniform_chi_square():
    # non-square 3x5 grid: 15 cells per end, 2 x 8192 draws; a generator that skipped the last row or
    # column (e.g. floor(u * (size - 1))) leaves 5 or 3 cells empty and fails by hundreds of sigmas
    Hg, Wg = 3, 5
    pos = drloc_pairs(_grid((4, Hg, Wg, 1)), 2048, seed=2024, offset=11, backend="triton")[2]
    for end in (pos[..., 0:2], pos[..., 2:4]):
        cells = (end[..., 0] * Wg + end[..., 1]).flatten()
        counts = torch.bincount(cells, minlength=Hg * Wg)
        assert counts.numel() == Hg * Wg and (counts > 0).all()
        assert chisquare(counts.numpy()).pvalue > 1e-3
    # the two ends are independent: joint (cell1, cell2) table over 225 bins, 8192 draws
    joint = (pos[..., 0] * Wg + pos[..., 1]) * (Hg * Wg) + pos[..., 2] * Wg + pos[..., 3]
    assert chisquare(torch.bincount(joint.flatten(), minlength=(Hg * Wg) ** 2).numpy()).pvalue > 1e-3


def test_positions_uniform_torch_stream_many_offsets():
    # the torch replica over many steps (offsets): 7x7 grid as in Swin-T, 2 x 64 x 64 x 50 draws
    pos = torch.cat([philox_positions(64, 7, 7, 64, seed=3, offset=o) for o in range(50)])
    rows = torch.bincount(pos[..., [0, 2]].flatten(), minlength=7)
    cols = torch.bincount(pos[..., [1, 3]].flatten(), minlength=7)
    assert chisquare(rows.numpy()).pvalue > 1e-3 and chisquare(cols.numpy()).pvalue > 1e-3


def test_one_by_one_grid():
    grid = _grid((2, 1, 1, 3), seed=4).requires_grad_()
    pairs, targets, positions = drloc_pairs(grid, 5, seed=1, backend="triton")
    assert (positions == 0).all() and (targets == 0).all()
    assert torch.equal(pairs, grid.detach().reshape(2, 1, 3).repeat(1, 5, 2))
    pairs.sum().backward()
    assert torch.equal(grid.grad, torch.full_like(grid, 10.0))  # 5 pairs x 2 ends


# --- forward with given positions ------------------------------------------------------------------
SHAPES = [(2, 3, 5, 8), (1, 1, 1, 4), (2, 1, 6, 8), (2, 4, 4, 33), (3, 2, 7, 130)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_given_positions_is_exact_gather(shape, dtype):
    B, Hg, Wg, C = shape
    grid = _grid(shape, dtype)
    positions = _repeating_positions(B, Hg, Wg, 9)
    pairs, targets, out_pos = drloc_pairs(grid, 9, seed=0, positions=positions, backend="triton")
    ref_pairs, ref_targets = reference.drloc_pairs(grid, positions)
    assert pairs.dtype == dtype and targets.dtype == torch.float32 and out_pos.dtype == torch.int64
    assert torch.equal(pairs, ref_pairs)  # a copy: bit-exact in every dtype
    assert torch.equal(targets, ref_targets)
    assert torch.equal(out_pos, positions)
    # spell the contract out once without the reference: first embedding, then second
    b, j = B - 1, 3
    r1, c1, r2, c2 = positions[b, j].tolist()
    assert torch.equal(pairs[b, j], torch.cat([grid[b, r1, c1], grid[b, r2, c2]]))


def test_forward_strided_grid_and_int32_positions():
    base = _grid((2, 6, 4, 10))
    grid = base.permute(0, 2, 1, 3)[:, :, ::2]  # (2, 4, 3, 10) non-contiguous
    positions = _random_positions(2, 4, 3, 12).to(torch.int32)
    pairs, targets, _ = drloc_pairs(grid, 12, seed=0, positions=positions, backend="triton")
    ref_pairs, ref_targets = reference.drloc_pairs(grid, positions)
    assert torch.equal(pairs, ref_pairs) and torch.equal(targets, ref_targets)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_targets_with_and_without_abs(backend):
    Hg, Wg = 3, 6
    positions = torch.tensor([[[0, 0, 2, 5], [2, 5, 0, 0], [1, 3, 1, 3], [2, 1, 0, 4]]])  # (1, 4, 4)
    grid = _grid((1, Hg, Wg, 2))
    run = lambda use_abs: drloc_pairs(
        grid, 4, seed=0, positions=positions, use_abs=use_abs, backend=backend
    )[1]
    assert run(True).tolist() == [[[2, 5], [2, 5], [0, 0], [2, 3]]]
    # delta + (size - 1): classes 0 .. 2 * (size - 1), per axis
    assert run(False).tolist() == [[[0, 0], [4, 10], [2, 5], [4, 2]]]
    sampled = drloc_pairs(grid, 500, seed=5, use_abs=False, backend=backend)[1]
    assert sampled[..., 0].min() >= 0 and sampled[..., 0].max() <= 2 * (Hg - 1)
    assert sampled[..., 1].min() >= 0 and sampled[..., 1].max() <= 2 * (Wg - 1)
    assert sampled[..., 1].max() == 2 * (Wg - 1) and sampled[..., 1].min() == 0


# --- backward -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 5, 8), (1, 1, 1, 4), (2, 5, 1, 8), (2, 2, 3, 33)])
def test_grid_gradient_matches_float64_reference(shape, dtype):
    B, Hg, Wg, C = shape
    m = 11
    positions = _repeating_positions(B, Hg, Wg, m)
    grid = _grid(shape, dtype).requires_grad_()
    weight = _grid((B, m, 2 * C), seed=9)  # upstream gradient
    pairs, _, _ = drloc_pairs(grid, m, seed=0, positions=positions, backend="triton")
    (pairs.float() * weight).sum().backward()

    grid64 = grid.detach().double().requires_grad_()
    ref_pairs, _ = reference.drloc_pairs(grid64, positions)
    (ref_pairs * weight.to(ref_pairs.dtype)).sum().backward()
    assert grid.grad.dtype == dtype
    abs_sum = torch.autograd.grad((reference.drloc_pairs(grid64, positions)[0] * weight.double().abs()).sum(),
                                  grid64)[0]
    assert_within_sum_bound(grid.grad, grid64.grad, abs_sum, terms=2 * m)
    # cell (0, 0) collects m // 2 pairs from both ends; unsampled cells get exactly zero
    hits = torch.zeros(B, Hg * Wg, dtype=torch.bool)
    hits.scatter_(1, positions[..., 0] * Wg + positions[..., 1], True)
    hits.scatter_(1, positions[..., 2] * Wg + positions[..., 3], True)
    assert (grid.grad.reshape(B, Hg * Wg, C)[~hits] == 0).all()


def test_backward_is_deterministic():
    grid = _grid((2, 3, 3, 20)).requires_grad_()
    positions = _repeating_positions(2, 3, 3, 40)
    grads = []
    for _ in range(2):
        grid.grad = None
        pairs = drloc_pairs(grid, 40, seed=0, positions=positions, backend="triton")[0]
        (pairs * torch.linspace(-1, 1, pairs.numel()).view_as(pairs)).sum().backward()
        grads.append(grid.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_sampled_backward_matches_torch_backend():
    grid = _grid((2, 4, 3, 6)).requires_grad_()
    weight = _grid((2, 30, 12), seed=3)
    grads = []
    for backend in ("triton", "torch"):
        grid.grad = None
        (drloc_pairs(grid, 30, seed=4, offset=9, backend=backend)[0] * weight).sum().backward()
        grads.append(grid.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-6)


# --- the pair-sum variant (project before gather) ------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6), (torch.float16, 2e-3)])
def test_pair_sum_forward_and_backward(dtype, tol):
    B, Hg, Wg, C2 = 2, 3, 4, 2 * 20
    m = 10
    positions = _repeating_positions(B, Hg, Wg, m)
    grid = _grid((B, Hg, Wg, C2), dtype).requires_grad_()
    out, targets, _ = drloc_pair_sum(grid, m, seed=0, positions=positions, backend="triton")
    grid64 = grid.detach().double().requires_grad_()
    ref, ref_targets = reference.drloc_pair_sum(grid64, positions)
    # definition: first half at p1 plus second half at p2
    r1, c1, r2, c2 = positions[1, 2].tolist()
    expected = grid64[1, r1, c1, :20] + grid64[1, r2, c2, 20:]
    torch.testing.assert_close(ref[1, 2], expected)
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    assert torch.equal(targets, ref_targets)
    weight = _grid((B, m, C2 // 2), seed=5)
    (out.float() * weight).sum().backward()
    (ref * weight.double()).sum().backward()
    abs_sum = torch.autograd.grad((reference.drloc_pair_sum(grid64, positions)[0] * weight.double().abs()).sum(),
                                  grid64)[0]
    assert_within_sum_bound(grid.grad, grid64.grad, abs_sum, terms=m)


def test_pair_sum_draws_the_same_positions():
    grid = _grid((2, 5, 5, 6))
    a = drloc_pairs(grid, 16, seed=1, offset=2, backend="triton")
    b = drloc_pair_sum(grid, 16, seed=1, offset=2, backend="triton")
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])


# --- compile, dispatch, errors --------------------------------------------------------------------------
def test_custom_op_traces_under_torch_compile():
    grid = _grid((2, 3, 4, 8)).requires_grad_()

    def loss(g, offset):
        pairs, targets, _ = drloc_pairs(g, 6, seed=3, offset=offset, backend="triton")
        return (pairs.sum(-1) * targets[..., 0]).sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    for offset in (0, 1):
        grid.grad = None
        compiled(grid, offset).backward()
        expected_grad = grid.grad.clone()
        grid.grad = None
        loss(grid, offset).backward()
        assert torch.equal(grid.grad, expected_grad)


def test_custom_ops_pass_opcheck():
    # schema, fake tensor, autograd registration and AOT dispatch (dynamic shapes) of the three ops
    grid = _grid((2, 3, 4, 8)).requires_grad_()
    positions = _random_positions(2, 3, 4, 6)
    seed, offset = torch.tensor(3), torch.tensor(2**40 + 1)
    ops = torch.ops.fastvit
    for args in [(grid, None, 6, seed, offset, True, False), (grid, positions, 6, seed, offset, False, True)]:
        results = torch.library.opcheck(ops.drloc_pairs.default, args)
        assert set(results.values()) == {"SUCCESS"}, results
    grad_out = _grid((2, 6, 16), seed=2)
    results = torch.library.opcheck(ops.drloc_pairs_backward.default, (grad_out, positions, 3, 4, 8, False))
    assert set(results.values()) == {"SUCCESS"}, results
    results = torch.library.opcheck(ops.drloc_positions.default, (seed, offset, 2, 3, 4, 6))
    assert set(results.values()) == {"SUCCESS"}, results


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_tensor_seed_and_offset_draw_the_int_stream(backend):
    # what a compiled step passes: int64 0-dim tensors, the same positions as the ints
    grid = _grid((2, 4, 7, 2))
    for seed, offset in [(5, 9), (2**62 + 5, 2**40 + 3)]:
        a = drloc_pairs(grid, 24, seed=torch.tensor(seed), offset=torch.tensor(offset), backend=backend)
        assert torch.equal(a[2], philox_positions(2, 4, 7, 24, seed, offset))
        assert torch.equal(a[2], drloc_positions(torch.tensor(seed), torch.tensor(offset), 2, 4, 7, 24))


@pytest.mark.parametrize(
    "value,message",
    [(torch.tensor(3, dtype=torch.int32), "int64 0-dim tensor on cpu, got torch.int32 of shape ()"),
     (torch.tensor([3]), "int64 0-dim tensor on cpu, got torch.int64 of shape (1,)")],
)
def test_user_errors_stream_tensors(value, message):
    with pytest.raises(UserError, match=re.escape(f"drloc_pairs offset must be an int or an {message}")):
        drloc_pairs(_grid((2, 3, 5, 4)), 4, seed=0, offset=value)


def test_auto_backend_is_torch_on_cpu(monkeypatch):
    grid = _grid((1, 2, 2, 2)).requires_grad_()
    called = []
    # the package re-exports the function under the module's name: patch the module object itself
    module = sys.modules["fastvit.kernels.drloc_pairs"]
    monkeypatch.setattr(module, "drloc_pairs_forward", lambda *a: called.append(a))
    drloc_pairs(grid, 4, seed=0)
    assert called == []  # the triton launcher never ran


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(backend="cuda"), "unknown drloc_pairs backend 'cuda'; choose from triton, torch"),
        (dict(positions=torch.zeros(2, 3, 4, dtype=torch.long)), "positions must be an integer tensor"),
        (dict(positions=torch.full((2, 4, 4), 3)), "positions must satisfy 0 <= r < 3 and 0 <= c < 5"),
        (dict(positions=torch.zeros(2, 4, 4)), "positions must be an integer tensor"),
        (dict(seed=-1), "seed and offset must lie in [0, 2^63)"),
        (dict(offset=2**63), "seed and offset must lie in [0, 2^63)"),
    ],
)
def test_user_errors(kwargs, message):
    kwargs = dict(dict(seed=0), **kwargs)
    with pytest.raises(UserError, match=re.escape(message)):
        drloc_pairs(_grid((2, 3, 5, 4)), 4, **kwargs)


def test_user_errors_shapes_and_forced_triton(monkeypatch):
    with pytest.raises(UserError, match=r"grid of shape \(B, Hg, Wg, C\)"):
        drloc_pairs(torch.zeros(2, 9, 4), 4, seed=0)
    with pytest.raises(UserError, match="num_pairs must be >= 1"):
        drloc_pairs(_grid((2, 3, 5, 4)), 0, seed=0)
    with pytest.raises(UserError, match="even channel count"):
        drloc_pair_sum(_grid((2, 3, 5, 5)), 4, seed=0)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(UserError, match="backend 'triton' needs a CUDA tensor"):
        drloc_pairs(_grid((2, 3, 5, 4)), 4, seed=0, backend="triton")
