"""L_drloc heads, losses and the lambda schedule against float64 references built from the positions."""

import copy
import math

import pytest
import torch

from fastvit.errors import UserError
from fastvit.kernels import reference
from fastvit.kernels.drloc_pairs import philox_positions
from fastvit.objectives.drloc import HIDDEN, Drloc, DrlocHead, drloc_lambda, scale_seed


def _grid(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _seeded(module, seed=0):
    """Re-initialize a module's parameters from an explicit generator (the test must not depend on global RNG)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return module


def _reference_loss(head, grid, positions, use_abs):
    """The SPEC 2.5 loss in float64, written independently of DrlocHead.loss."""
    head64 = copy.deepcopy(head).double()
    pairs, targets = reference.drloc_pairs(grid.double(), positions, use_abs)
    targets = targets.double()
    out = head64(pairs)
    if head.mode == "l1":
        return (out - targets).abs().mean()
    total = torch.zeros((), dtype=torch.float64)
    for axis, logits in enumerate(out):
        labels = targets[..., axis].long()  # (B, m)
        log_p = torch.log_softmax(logits, -1)
        if head.mode == "ce":
            total = total - log_p.gather(-1, labels.unsqueeze(-1)).mean()
        else:
            p = log_p.exp()
            classes = torch.arange(logits.shape[-1], dtype=torch.float64)
            mean = (p * classes).sum(-1)
            var = (p * (classes - mean[..., None]) ** 2).sum(-1) + 1e-8
            total = total + ((mean - targets[..., axis]) ** 2 / var + 0.001 * torch.log(var)).mean()
    return total


@pytest.mark.parametrize("path", ["gather", "project"])
@pytest.mark.parametrize("use_abs", [True, False])
@pytest.mark.parametrize("mode", ["l1", "ce", "cbr"])
def test_loss_matches_float64_reference(mode, use_abs, path):
    B, Hg, Wg, C, m, seed, offset = 3, 4, 5, 16, 24, 11, 7  # non-square grid
    drloc = _seeded(Drloc([C], mode=mode, num_pairs=m, use_abs=use_abs, grid_sizes=[(Hg, Wg)], path=path))
    grid = _grid((B, Hg, Wg, C))
    loss = drloc([grid], seed=seed, offset=offset)
    positions = philox_positions(B, Hg, Wg, m, scale_seed(seed, 0), offset)
    expected = _reference_loss(drloc.heads[0], grid, positions, use_abs)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss.double(), expected, rtol=2e-5, atol=1e-6)


def test_ce_heads_class_counts_follow_use_abs_per_axis():
    abs_head = DrlocHead(8, mode="ce", grid_size=(3, 7), use_abs=True)
    signed_head = DrlocHead(8, mode="cbr", grid_size=(3, 7), use_abs=False)
    assert abs_head.row_head.out_features == 3 and abs_head.col_head.out_features == 7
    assert signed_head.row_head.out_features == 5 and signed_head.col_head.out_features == 13
    l1_head = DrlocHead(8, grid_size=(3, 7))
    assert [type(x).__name__ for x in l1_head.trunk] == ["ReLU", "Linear", "ReLU", "Linear"]
    assert l1_head.fc1.in_features == 16 and l1_head.trunk[-1].out_features == 2


def test_l1_loss_by_hand():
    head = DrlocHead(2, grid_size=(2, 2))
    out = torch.tensor([[[0.5, 1.0], [2.0, 0.0]]])
    targets = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])
    assert head.loss(out, targets).item() == pytest.approx((0.5 + 0 + 1 + 1) / 4)


def test_cbr_confident_correct_prediction_beats_uncertain_one():
    head = DrlocHead(2, mode="cbr", grid_size=(3, 3))
    target = torch.tensor([[[2.0, 0.0]]])
    sharp = torch.tensor([[[-9.0, -9.0, 9.0]]]), torch.tensor([[[9.0, -9.0, -9.0]]])
    flat = torch.zeros(1, 1, 3), torch.zeros(1, 1, 3)
    # uniform over {0,1,2}: mean 1, var 2/3 per axis -> (1 / (2/3) + 0.001 log(2/3)) * 2
    assert head.loss(flat, target).item() == pytest.approx(2 * (1.5 + 0.001 * math.log(2 / 3)), rel=1e-5)
    assert head.loss(sharp, target) < head.loss(flat, target)


@pytest.mark.parametrize("mode", ["l1", "ce", "cbr"])
def test_project_path_equals_gather_path_in_value_and_gradients(mode):
    B, Hg, Wg, C, m = 2, 3, 3, 12, 20
    results = []
    for path in ("gather", "project"):
        # float64: the two summation orders then agree to ~1e-8 (cbr divides by small variances)
        drloc = _seeded(Drloc([C], mode=mode, num_pairs=m, grid_sizes=[(Hg, Wg)], path=path)).double()
        grid = _grid((B, Hg, Wg, C)).double().requires_grad_()
        loss = drloc([grid], seed=5, offset=3)
        loss.backward()
        results.append((loss.detach(), grid.grad, [p.grad for p in drloc.parameters()]))
    (loss_g, grad_g, params_g), (loss_p, grad_p, params_p) = results
    torch.testing.assert_close(loss_p, loss_g, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grad_p, grad_g, rtol=1e-8, atol=1e-10)
    for a, b in zip(params_p, params_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("path", ["gather", "project"])
def test_gradients_reach_grid_and_every_head_parameter(path):
    drloc = Drloc([8, 16], mode="ce", num_pairs=16, grid_sizes=[(4, 4), (2, 3)], path=path)
    _seeded(drloc)
    grids = [_grid((2, 4, 4, 8), 1).requires_grad_(), _grid((2, 2, 3, 16), 2).requires_grad_()]
    drloc(grids, seed=0, offset=0).backward()
    for grid in grids:
        assert grid.grad is not None and grid.grad.abs().sum() > 0
    for name, p in drloc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_multiscale_loss_is_the_sum_over_scales():
    dims, sizes = [8, 16, 16], [(6, 6), (3, 3), (2, 1)]
    grids = [_grid((2, *size, dim), i) for i, (dim, size) in enumerate(zip(dims, sizes, strict=True))]
    drloc = _seeded(Drloc(dims, mode="l1", num_pairs=10, grid_sizes=sizes))
    total = drloc(grids, seed=9, offset=4)
    parts = []
    for i, (grid, head) in enumerate(zip(grids, drloc.heads, strict=True)):
        positions = philox_positions(2, *head.grid_size, 10, scale_seed(9, i), 4)
        parts.append(_reference_loss(head, grid, positions, True))
    torch.testing.assert_close(total.double(), sum(parts), rtol=2e-5, atol=1e-6)
    # every scale draws its own stream (same-size scales would otherwise see identical positions)
    assert len({scale_seed(9, i) for i in range(3)}) == 3 and scale_seed(9, 0) == 9


def test_loss_depends_on_offset_and_is_reproducible():
    drloc = _seeded(Drloc([8], num_pairs=8, grid_sizes=[(5, 5)]))
    grid = _grid((2, 5, 5, 8))
    a, b, c = (drloc([grid], seed=1, offset=o) for o in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_auto_path_projects_only_small_grids():
    drloc = Drloc([8, 8, 8], num_pairs=64, grid_sizes=[(4, 4), (7, 7), (8, 8)])
    assert [drloc.uses_projection(h) for h in drloc.heads] == [True, True, False]


def _fp32_error_bound(head, grid64, positions, trials=3, seed=0):
    """Normwise bounds on the fp32 evaluation error of (loss, dloss/dgrid), from float64 alone.

    fp32 evaluation is backward stable per layer: each dot product of length K is exact for operands
    perturbed by a relative c·sqrt(K)·eps (probabilistic rounding bound; K = 512, the hidden width, is the
    longest reduction). So the float64 result under such random relative perturbations of the grid and of
    every parameter bounds what any fp32 BLAS (AVX2, AVX-512, AMX) may return, scaled with the problem's own
    conditioning (this cbr loss divides by a softmax variance near 1e-8) instead of one machine's rounding."""
    rel = 4 * math.sqrt(HIDDEN) * torch.finfo(torch.float32).eps
    gen = torch.Generator().manual_seed(seed)
    jitter = lambda t: t * (1 + rel * (2 * torch.rand(t.shape, generator=gen, dtype=torch.float64) - 1))
    loss64, grad64 = _loss_and_grad64(head, grid64, positions)
    loss_bound = grad_bound = 0.0
    for _ in range(trials):
        perturbed = copy.deepcopy(head).double()
        with torch.no_grad():
            for p in perturbed.parameters():
                p.copy_(jitter(p))
        loss, grad = _loss_and_grad64(perturbed, jitter(grid64), positions)
        loss_bound = max(loss_bound, 2 * (loss - loss64).abs().item())
        grad_bound = max(grad_bound, 2 * (grad - grad64).norm().item())
    return loss64, grad64, loss_bound, grad_bound


def _loss_and_grad64(head, grid64, positions):
    grid64 = grid64.detach().requires_grad_()
    loss = _reference_loss(head, grid64, positions, use_abs=True)
    (grad,) = torch.autograd.grad(loss, grid64)
    return loss.detach(), grad


def test_triton_backend_matches_torch_backend():
    """Both pair backends and both first-layer paths against float64, each within the fp32 error bound."""
    pytest.importorskip("triton")
    grid = _grid((2, 3, 4, 8)).requires_grad_()
    seed, offset = 2, 1
    for backend in ("triton", "torch"):
        for path in ("gather", "project"):
            drloc = _seeded(Drloc([8], mode="cbr", num_pairs=12, grid_sizes=[(3, 4)], path=path, backend=backend))
            grid.grad = None
            loss = drloc([grid], seed=seed, offset=offset)
            loss.backward()
            positions = philox_positions(2, 3, 4, 12, scale_seed(seed, 0), offset)
            loss64, grad64, loss_bound, grad_bound = _fp32_error_bound(drloc.heads[0], grid.double(), positions)
            assert (loss.double() - loss64).abs().item() <= loss_bound, (backend, path, loss.item(), loss64.item())
            grad_err = (grid.grad.double() - grad64).norm().item()
            assert grad_err <= grad_bound, (backend, path, grad_err, grad_bound, grad64.norm().item())


@pytest.mark.parametrize(
    "epoch,expected",
    [(0, 0.0), (5.5, 0.1375), (10, 0.25), (20, 0.5), (60, 0.25), (90, 0.0625), (100, 0.0), (130, 0.0)],
)
def test_lambda_schedule_ramps_then_decays(epoch, expected):
    assert drloc_lambda(epoch, 0.5, 20, 100) == pytest.approx(expected)


def test_lambda_schedule_without_warmup_and_with_a_too_long_one():
    assert drloc_lambda(0, 0.1, 0, 50) == pytest.approx(0.1)
    assert drloc_lambda(25, 0.1, 0, 50) == pytest.approx(0.05)
    # a warm-up longer than the run: the ramp, cut to 0 at the end
    assert drloc_lambda(5, 0.5, 20, 10) == pytest.approx(0.125)
    assert drloc_lambda(12, 0.5, 20, 10) == 0.0


def test_user_errors():
    with pytest.raises(UserError, match="unknown drloc mode 'mse'; choose from l1, ce, cbr"):
        DrlocHead(8, mode="mse", grid_size=(2, 2))
    with pytest.raises(UserError, match="unknown drloc path 'fast'; choose from auto, gather, project"):
        Drloc([8], grid_sizes=[(2, 2)], path="fast")
    with pytest.raises(UserError, match="one grid size per input dim"):
        Drloc([8, 16], grid_sizes=[(2, 2)])
    drloc = Drloc([8], grid_sizes=[(2, 3)])
    with pytest.raises(UserError, match=r"expects grids of shape \(B, 2, 3, 8\), got \(1, 3, 2, 8\)"):
        drloc([torch.zeros(1, 3, 2, 8)], seed=0, offset=0)
    with pytest.raises(UserError, match="has 1 heads but got 2 grids"):
        drloc([torch.zeros(1, 2, 3, 8)] * 2, seed=0, offset=0)
    with pytest.raises(UserError, match="drloc_lambda needs lam >= 0"):
        drloc_lambda(1, 0.5, 20, 0)


def test_compiles_with_the_torch_backend():
    drloc = _seeded(Drloc([8], mode="ce", num_pairs=6, grid_sizes=[(3, 3)]))
    grid = _grid((2, 3, 3, 8))
    compiled = torch.compile(drloc, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled([grid], seed=1, offset=2), drloc([grid], seed=1, offset=2))


@pytest.mark.parametrize("path", ["gather", "project"])
def test_autocast_bf16_loss_is_float32_and_close(path):
    drloc = _seeded(Drloc([16], mode="ce", num_pairs=32, grid_sizes=[(5, 5)], path=path))
    grid = _grid((2, 5, 5, 16)).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = drloc([grid], seed=3, offset=1)
    loss.backward()
    assert loss.dtype == torch.float32 and grid.grad.dtype == torch.float32
    torch.testing.assert_close(loss, drloc([grid], seed=3, offset=1), rtol=2e-2, atol=0)
