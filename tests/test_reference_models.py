"""benchmarks.reference_models: the benchmarks' frozen paper-A ViT and Swin compute what fastvit's compute."""

import pytest
import torch

from benchmarks.reference_models import SWIN_T, PlainDrloc, PlainSwin, PlainViT
from fastvit import models
from fastvit.objectives.dino import DINO


@pytest.mark.parametrize("arch, plain_model, img_size", [
    ("vit", PlainViT, 32), ("swin", PlainSwin, 32), ("swin_t", lambda **kw: PlainSwin(**SWIN_T, **kw), 224)])
def test_plain_model_equals_fastvit_with_the_same_weights_float64(arch, plain_model, img_size):
    torch.manual_seed(0)
    ours = models.create(arch, img_size=img_size, num_classes=10).double()
    for p in ours.parameters():  # biases and bias tables start at 0: give every parameter a value
        p.data.add_(0.02 * torch.randn_like(p))
    plain = plain_model(num_classes=10).double()
    plain.load_state_dict(ours.state_dict())  # same names and shapes, strict
    x = torch.randn(2, 3, img_size, img_size, dtype=torch.float64)
    a, b = ours(x), plain(x)
    torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    a.square().sum().backward()
    b.square().sum().backward()
    grads = dict(ours.named_parameters())
    for name, p in plain.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-10, atol=1e-12, msg=name)


def test_plain_drloc_is_the_l1_loss_of_the_pairs_it_draws_float64():
    torch.manual_seed(0)
    B, Hg, Wg, C, m = 3, 4, 5, 6, 7
    drloc = PlainDrloc(C, num_pairs=m, hidden=8).double()
    grid = torch.randn(B, Hg, Wg, C, dtype=torch.float64)
    torch.manual_seed(1)
    loss = drloc(grid)
    torch.manual_seed(1)  # the same draws: rows (B, m, 2 points), then cols
    rows, cols = torch.randint(Hg, (B, m, 2)), torch.randint(Wg, (B, m, 2))
    total = 0.0
    for b in range(B):
        for j in range(m):
            (r1, r2), (c1, c2) = rows[b, j].tolist(), cols[b, j].tolist()
            pred = drloc.mlp(torch.cat([grid[b, r1, c1], grid[b, r2, c2]]))
            total += (pred[0] - abs(r1 - r2)).abs() + (pred[1] - abs(c1 - c2)).abs()
    torch.testing.assert_close(loss, total / (B * m * 2), rtol=1e-12, atol=1e-12)


def test_gpu_check_reference_runs_swin_t_with_drloc_on_paper_b_pipeline():
    import numpy as np

    from benchmarks.gpu_check import reference_rate

    # 32-px images, as gpu_check passes them: paper B's transform crops them to 224 itself
    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    got = reference_rate("swin_t", images, np.array([1, 2]), batch=2, steps=1, device="cpu", num_workers=0,
                         drloc=True, pipeline="drloc21")
    assert got["images_per_s"] > 0 and got["batch"] == 2


def test_plain_vit_drop_path_keeps_the_expectation():
    torch.manual_seed(0)
    plain = PlainViT(num_classes=10, drop_path=0.5).double().train()
    drop = plain.blocks[-1].drop_path
    x = torch.ones(20000, 1, 1, dtype=torch.float64)
    kept = drop(x)
    assert set(kept.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - p)
    assert abs(kept.mean().item() - 1.0) < 0.03  # ~4 sigma of the mean (sigma 1 / sqrt(20000))
    assert torch.equal(drop.eval()(x), x)


def test_plain_vit_runs_paper_a_multi_crop_through_dino():
    torch.manual_seed(0)
    dino = DINO(PlainViT(num_classes=10), total_epochs=10)
    views = [torch.randn(2, 3, 32, 32) for _ in range(2)] + [torch.randn(2, 3, 16, 16) for _ in range(8)]
    loss = dino(views, 0.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert dino.student.backbone.pos_embed.grad is not None
    assert dino.student.backbone.pos_embed_for(16, 16, 16).shape == (1, 17, 192)
