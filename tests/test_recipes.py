"""Recipes reproduce what each paper's code ran: schedule length, clip mode, teacher drop path, weight-decay
groups, lambda and drop path by arch family, multi-crop scales by dataset."""

import math

import pytest
import torch

from fastvit import config, models
from fastvit.objectives.dino import DINO
from fastvit.objectives.drloc import drloc_lambda
from fastvit.train import clip_gradients_, lr_schedule, param_groups, prefixed_no_decay
from tests.cli_runner import printed

STEPS = 390  # paper B: CIFAR-10's 50,000 images at batch 128



def test_drloc21_follows_a_300_epoch_schedule_cut_at_100_as_paper_b_logged():
    cfg = config.build({"batch_size": 128, "arch": "swin_t"}, recipe="drloc21")
    lr_at = lr_schedule(cfg, STEPS, world_size=1)
    # the warm-up heads for the peak, 5e-4 x 128 / 512; then the cosine already at 20 / 300 (timm)
    assert lr_at(20 * STEPS - 1) == pytest.approx(1.25e-4, rel=1e-3)
    # its log at [100/300]: lr 9.4e-5 (timm's cosine of step / total, floor 5e-6 x 128 / 512), lambda 0.357
    assert f"{lr_at(100 * STEPS):.1e}" == "9.4e-05"
    timm = 1.25e-6 + 0.5 * (1.25e-4 - 1.25e-6) * (1 + math.cos(math.pi * 100 / 300))
    assert lr_at(100 * STEPS) == pytest.approx(timm, rel=1e-12)
    lam = drloc_lambda(100, cfg.drloc_weight(), cfg.drloc_warmup_epochs, cfg.schedule_length())
    assert f"{lam:.3f}" == "0.357"
    assert cfg.epochs == 100 and cfg.schedule_length() == 300


def test_drloc21_annealed_keeps_the_100_epoch_schedule():
    cfg = config.build({"batch_size": 128, "arch": "swin_t"}, recipe="drloc21-annealed")
    lr_at = lr_schedule(cfg, STEPS, world_size=1)
    assert lr_at(100 * STEPS) == pytest.approx(cfg.min_lr)  # unscaled floor, reached at the last step
    assert lr_at(60 * STEPS) == pytest.approx(5e-6 + (1.25e-4 - 5e-6) / 2)  # cosine from the warm-up's end
    assert drloc_lambda(100, cfg.drloc_weight(), cfg.drloc_warmup_epochs, cfg.schedule_length()) == 0.0
    assert config.build({"arch": "cvt_13"}, recipe="drloc21-annealed").drop_path == 0.2


def test_print_config_shows_the_resolved_drloc21_values():
    swin = printed("train", "--recipe", "drloc21", "--arch", "swin_t_p2_w4")
    assert swin["drloc_lambda"] == 0.5  # a Swin by family, not by exact name
    assert (swin["epochs"], swin["schedule_epochs"]) == (100, 300)
    assert printed("train", "--recipe", "drloc21", "--arch", "swin_t")["drop_path"] == 0.2
    cvt = printed("train", "--recipe", "drloc21", "--arch", "cvt_13")
    assert cvt["drop_path"] == 0.0 and cvt["drloc_lambda"] == 0.1
    assert printed("train", "--recipe", "drloc21", "--arch", "cvt_13", "--drloc-lambda", "0.3")["drloc_lambda"] == 0.3
    assert printed("train", "--recipe", "drloc21", "--arch", "t2t_vit_14")["drop_path"] == 0.0


def test_print_config_shows_gani22_pretrain_as_paper_a_ran_it():
    c = printed("pretrain", "--recipe", "gani22-pretrain")
    assert (c["clip_mode"], c["grad_clip"], c["teacher_drop_path"], c["wd_exclude"]) == ("per-tensor", 3.0, True, "1d")
    assert (c["global_scale"], c["local_scale"]) == ([0.7, 1.0], [0.2, 0.5])
    tiny = printed("pretrain", "--recipe", "gani22-pretrain", "--dataset", "tiny-imagenet")
    assert (tiny["global_scale"], tiny["local_scale"]) == ([0.5, 1.0], [0.2, 0.4])
    mine = printed("pretrain", "--recipe", "gani22-pretrain", "--dataset", "tiny-imagenet", "--global-scale", "0.6,1")
    assert (mine["global_scale"], mine["local_scale"]) == ([0.6, 1.0], [0.2, 0.4])
    assert printed("finetune", "--recipe", "gani22-finetune", "--init", "x.pt")["wd_exclude"] == "none"


@pytest.mark.parametrize("arch,lam", [("swin_t_p2_w4", 0.5), ("swin_tiny", 0.5), ("swin", 0.5), ("t2t_vit_14", 0.1),
                                      ("cvt_13", 0.1), ("vit_tiny", 0.1), ("resnet50", 0.1)])
def test_drloc_lambda_by_arch_family(arch, lam):
    assert config.build({"arch": arch}).drloc_weight() == lam


def test_resolution_is_idempotent():
    cfg = config.build({"arch": "cvt_13", "dataset": "tiny-imagenet"}, recipe="drloc21")
    again = config.build({k: v for k, v in cfg.to_dict().items() if k not in ("command", "recipe")})
    assert again.to_dict() | {"recipe": "drloc21"} == cfg.to_dict()


def grads_like(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in [(4, 3), (7,), (2, 2, 5), (1,)]]
    for p, scale in zip(params, [10.0, 0.01, 1.0, 100.0], strict=True):
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float32) * scale
    return params


def test_per_tensor_clip_is_paper_a_clip_gradients():
    params, ref = grads_like(0), grads_like(0)
    clip_gradients_(params, 3.0, "per-tensor")
    for p, r in zip(params, ref, strict=True):  # paper A: each tensor's norm clipped to 3 on its own
        g = r.grad.double()
        coef = 3.0 / (g.norm() + 1e-6)
        expected = g * coef if coef < 1 else g
        torch.testing.assert_close(p.grad.double(), expected, rtol=1e-6, atol=1e-7)
    assert [round(float(p.grad.norm()), 4) for p in params][::2] == [3.0, 3.0]  # the large ones
    assert float(params[1].grad.norm()) < 0.1  # the small one untouched


def test_global_clip_is_the_global_norm():
    params, ref = grads_like(1), grads_like(1)
    clip_gradients_(params, 3.0, "global")
    total = torch.sqrt(sum(r.grad.double().norm() ** 2 for r in ref))
    for p, r in zip(params, ref, strict=True):
        torch.testing.assert_close(p.grad.double(), r.grad.double() * 3.0 / (total + 1e-6), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("exclude,decayed", [
    ("none", {"pos_embed", "cls_token", "bias", "weight"}),
    ("1d", {"pos_embed", "cls_token", "weight"}),
    ("1d-and-tables", {"weight"}),
])
def test_weight_decay_groups(exclude, decayed):
    model = models.create("vit_tiny", img_size=32, num_classes=10)
    groups = param_groups(model, prefixed_no_decay(model, ""), exclude)
    ids = {id(p) for g in groups if g["decay"] for p in g["params"]}
    kinds = {name.split(".")[-1] for name, p in model.named_parameters() if id(p) in ids}
    assert kinds == decayed
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def dino(teacher_drop_path: bool) -> DINO:
    torch.manual_seed(0)
    backbone = models.create("vit_tiny", img_size=32, num_classes=0, drop_path=0.5)
    return DINO(backbone, total_epochs=1, n_local=0, out_dim=16, teacher_drop_path=teacher_drop_path)


@pytest.mark.parametrize("keep", [True, False])
def test_teacher_drop_path(keep):
    d = dino(keep).train()
    assert d.teacher.training is keep and d.student.training
    x = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    with torch.no_grad():
        a, b = d.teacher(x), d.teacher(x)
    assert (not torch.equal(a, b)) is keep  # stochastic depth draws anew on every forward
    assert d.eval().teacher.training is False
