"""torch.compile (inductor) of a training step with L_drloc: one graph for every step, compiled == eager.

Before the pair sampling became one opaque op, inductor's lowering of the inlined Philox rounds did not
finish (its cost roughly doubles per round); these tests compile with inductor itself so that comes back
as a hang here, not in a user's run.
"""

import pytest
import torch
from torch import nn
from torch._inductor.compile_fx import compile_fx

from fastvit.kernels.drloc_pairs import drloc_pairs, philox_positions
from fastvit.models.layers import ReLU
from fastvit.objectives.drloc import HIDDEN, Drloc, DrlocHead
from fastvit.train import Supervised

EPS32 = torch.finfo(torch.float32).eps
# (lambda, seed, step) of three steps: a new seed, a step past 2^32 (the counter's high word)
STEPS = [(0.5, 3, 0), (0.25, 3, 1), (0.125, 11, 2**40 + 7)]


def counting_inductor(graphs: list):
    """An inductor backend that records every graph dynamo hands it (a recompile adds one)."""

    def backend(gm, example_inputs):
        graphs.append(gm)
        return compile_fx(gm, example_inputs)

    return backend


class TinyGridModel(nn.Module):
    """What Supervised needs of a backbone, small: 1x12x16 images -> a (B, 3, 4, 8) grid -> a (B, 2, 2, 16)
    grid (the second "stage", for multiscale) -> pooled -> 10 logits."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(1, 8, kernel_size=4, stride=4)
        self.merge = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 10)

    def forward_stages(self, x):
        first = self.embed(x).permute(0, 2, 3, 1)  # (B, 3, 4, 8)
        return [first, self.merge(first[:, ::2, ::2])]  # (B, 2, 2, 16)

    def forward_features(self, x):
        grid = self.forward_stages(x)[-1]
        return self.norm(grid).mean(dim=(1, 2)), grid

    def forward_head(self, pooled):
        return self.head(pooled)


def _objective(mode: str, multiscale: bool) -> Supervised:
    torch.manual_seed(0)
    model = TinyGridModel()
    dims, sizes = ([8, 16], [(3, 4), (2, 2)]) if multiscale else ([16], [(2, 2)])
    # 6 pairs: the single 2x2 grid (4 cells) runs the "project" path, the 3x4 grid the "gather" path
    return Supervised(model, Drloc(dims, mode=mode, num_pairs=6, grid_sizes=sizes), multiscale)


def _loss_and_grads(step_fn, objective, x, targets, lam, seed, step):
    objective.zero_grad(set_to_none=True)
    loss, aux = step_fn(x, targets, **Supervised.step_inputs(lam, seed, step, x.device))
    loss.backward()
    return loss.detach(), aux, [p.grad.clone() for p in objective.parameters()]


def _assert_close_by_magnitude(got, want):
    # both sides sum at most HIDDEN (512) products in float32, in different orders: each is within
    # HIDDEN * eps * sum|terms| of the exact value, and sum|terms| is bounded here by the tensor's largest entry
    tol = 2 * HIDDEN * EPS32 * max(want.abs().max().item(), EPS32)
    assert (got - want).abs().max().item() <= tol


@pytest.mark.slow
@pytest.mark.parametrize("mode,multiscale", [("l1", False), ("ce", True), ("cbr", True)])
def test_compiled_step_is_one_graph_and_matches_eager(mode, multiscale):
    objective = _objective(mode, multiscale)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 12, 16, generator=gen)
    targets = torch.randint(0, 10, (2,), generator=gen)
    torch._dynamo.reset()
    graphs = []
    compiled = torch.compile(objective, backend=counting_inductor(graphs), fullgraph=True)
    eager_losses = []
    for lam, seed, step in STEPS:
        want = _loss_and_grads(objective, objective, x, targets, lam, seed, step)
        got = _loss_and_grads(compiled, objective, x, targets, lam, seed, step)
        for g, w in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]], strict=True):
            _assert_close_by_magnitude(g, w)
        eager_losses.append(want[1])
    # the steps draw different pairs, so a graph that had baked in the first seed or step would fail above
    assert len({float(v) for v in eager_losses}) == len(STEPS)
    assert len(graphs) == 1  # every step (lambda, seed, offset as tensors) reuses the first graph


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compiled_draw_is_the_philox_stream_for_every_step(backend):
    grid = torch.randn(3, 4, 5, 2, generator=torch.Generator().manual_seed(2))
    torch._dynamo.reset()
    graphs = []

    def draw(g, seed, offset):
        return drloc_pairs(g, 16, seed=seed, offset=offset, backend=backend)[2]

    compiled = torch.compile(draw, backend=counting_inductor(graphs), fullgraph=True)
    for seed, offset in [(0, 0), (7, 1), (2**62 + 5, 2**40 + 3)]:
        positions = compiled(grid, torch.tensor(seed), torch.tensor(offset))
        assert torch.equal(positions, philox_positions(3, 4, 5, 16, seed, offset))  # bit-identical
    assert len(graphs) == 1


def _saved_dtypes(fn, *inputs) -> list[torch.dtype]:
    """dtypes of the tensors a compiled forward saves for backward: inductor's decompositions and partitioner,
    without its code generation."""
    from functorch.compile import min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table

    saved = []

    def fw_compiler(gm, example_inputs):
        (outputs,) = [n.args[0] for n in gm.graph.nodes if n.op == "output"]
        saved.extend(o.meta["val"].dtype for o in outputs if isinstance(o, torch.fx.Node))
        return gm

    backend = aot_autograd(fw_compiler=fw_compiler, bw_compiler=lambda gm, _: gm,
                           partition_fn=min_cut_rematerialization_partition, decompositions=select_decomp_table())
    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*inputs).sum().backward()
    return saved


@pytest.mark.parametrize("mode", ["l1", "ce"])
def test_compiled_drloc_head_saves_no_bool_mask(mode):
    # inductor's CPU code for bool tensors is ~16x slower than eager (NOTES, #16): the head's ReLUs must not
    # leave a saved x <= 0 mask behind; nn.ReLU does, so this fails if the trunk goes back to it
    head = DrlocHead(16, mode=mode, grid_size=(3, 4))
    pairs = torch.randn(2, 6, 32, requires_grad=True)

    def loss(p):
        return head.loss(head(p), torch.ones(2, 6, 2))

    saved = _saved_dtypes(loss, pairs)
    assert saved and torch.bool not in saved
    head.trunk[0] = nn.ReLU()
    assert torch.bool in _saved_dtypes(loss, pairs)  # the check itself can see a saved mask


def test_relu_is_nn_relu_exactly():
    x = torch.randn(300, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x[:7] = 0.0  # the kink: both give gradient 0 there
    grad = torch.randn(300, dtype=torch.float64)
    got_x, want_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = ReLU()(got_x), nn.ReLU()(want_x)
    got.backward(grad), want.backward(grad)
    assert torch.equal(got, want) and torch.equal(got_x.grad, want_x.grad)
