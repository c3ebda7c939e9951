"""benchmarks.reference_models: the benchmarks' frozen paper-A ViT and Swin compute what fastvit's compute."""

import pytest
import torch

from benchmarks.reference_models import PlainSwin, PlainViT
from fastvit import models
from fastvit.objectives.dino import DINO


@pytest.mark.parametrize("arch, plain_model", [("vit", PlainViT), ("swin", PlainSwin)])
def test_plain_model_equals_fastvit_with_the_same_weights_float64(arch, plain_model):
    torch.manual_seed(0)
    ours = models.create(arch, img_size=32, num_classes=10).double()
    for p in ours.parameters():  # biases and bias tables start at 0: give every parameter a value
        p.data.add_(0.02 * torch.randn_like(p))
    plain = plain_model(num_classes=10).double()
    plain.load_state_dict(ours.state_dict())  # same names and shapes, strict
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    a, b = ours(x), plain(x)
    torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    a.square().sum().backward()
    b.square().sum().backward()
    grads = dict(ours.named_parameters())
    for name, p in plain.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-10, atol=1e-12, msg=name)


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
