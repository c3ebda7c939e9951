"""DINO self-distillation (SPEC §3): head, multi-crop, loss + centring, EMA teacher, schedules."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastvit.errors import UserError
from fastvit.objectives.dino import (
    DINO,
    DINOHead,
    DINOLoss,
    MultiCropModel,
    cancel_last_layer_grads,
    ema_update_,
    make_teacher,
    momentum_schedule,
)


class TinyBackbone(nn.Module):
    """The model interface DINO relies on, at toy size: conv stem → (BatchNorm) → GELU → mean pool."""

    def __init__(self, num_classes: int = 10, width: int = 8, drop: float = 0.0, batchnorm: bool = False):
        super().__init__()
        self.num_features = width
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(width) if batchnorm else nn.Identity()
        self.drop = nn.Dropout(drop)
        self.head = nn.Linear(width, num_classes)
        self.calls: list[tuple[int, ...]] | None = []  # input shapes of forward_features; None: off

    def forward_features(self, x):
        if self.calls is not None:
            self.calls.append(tuple(x.shape))
        grid = F.gelu(self.norm(self.stem(x))).permute(0, 2, 3, 1)  # (B, H/2, W/2, C)
        return self.drop(grid.mean(dim=(1, 2))), grid

    def reset_classifier(self, num_classes: int):
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x):
        return self.head(self.forward_features(x)[0])


def make_views(batch, n_local, generator, dtype=torch.float32, global_size=16, local_size=8):
    """2 global views then n_local half-size local views, each [batch, 3, size, size]."""
    sizes = [global_size] * 2 + [local_size] * n_local
    return [torch.randn(batch, 3, s, s, generator=generator, dtype=dtype) for s in sizes]


def small_dino(seed=0, n_local=2, dtype=torch.float64, **backbone_kwargs):
    torch.manual_seed(seed)  # module init draws from the global generator
    backbone = TinyBackbone(**backbone_kwargs)
    dino = DINO(backbone, total_epochs=20, n_local=n_local, out_dim=32, hidden_dim=16, bottleneck_dim=8)
    return dino.to(dtype)


def reference_dino_loss(student_out, teacher_out, center, n_crops, student_temp, teacher_temp):
    """SPEC §3 written plainly in float64: average CE over (teacher view, other student view) pairs."""
    student_views = student_out.double().chunk(n_crops)
    teacher_views = teacher_out.double().chunk(2)
    total, terms = 0.0, 0
    for i, t in enumerate(teacher_views):
        q = torch.softmax((t - center.double()) / teacher_temp, dim=-1)
        for j, s in enumerate(student_views):
            if i == j:
                continue
            total = total + (-q * torch.log_softmax(s / student_temp, dim=-1)).sum(dim=-1).mean()
            terms += 1
    assert terms == 2 * n_crops - 2
    return total / terms


# ---------------------------------------------------------------- head


def test_head_matches_plain_computation_with_unit_prototypes():
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    head = DINOHead(24, out_dim=64, hidden_dim=32, bottleneck_dim=16).double()
    x = torch.randn(5, 24, generator=g, dtype=torch.float64)

    mlp = head.mlp
    h = F.gelu(mlp[0](x))
    h = F.gelu(mlp[2](h))
    z = mlp[4](h)
    z = z / z.norm(dim=-1, keepdim=True)
    v = head.last_layer.parametrizations.weight.original1
    expected = z @ (v / v.norm(dim=1, keepdim=True)).T  # magnitude 1: cosine with unit prototypes
    torch.testing.assert_close(head(x), expected, rtol=1e-12, atol=1e-12)

    magnitude = head.last_layer.parametrizations.weight.original0
    assert magnitude.shape == (64, 1) and not magnitude.requires_grad
    assert torch.equal(magnitude, torch.ones_like(magnitude))
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(64, dtype=torch.float64))
    assert head.last_layer.bias is None
    assert [type(m) for m in head.mlp] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    assert [m.out_features for m in head.mlp if isinstance(m, nn.Linear)] == [32, 32, 16]


def test_head_init_and_learnable_magnitude():
    torch.manual_seed(2)
    head = DINOHead(384, norm_last_layer=False)  # paper sizes: 384 → 512 → 512 → 256 → 1024
    weights = [m.weight for m in head.mlp if isinstance(m, nn.Linear)]
    weights.append(head.last_layer.parametrizations.weight.original1)
    for w in weights:
        assert abs(w.std().item() - 0.02) < 0.002, w.shape
    for m in head.mlp:
        if isinstance(m, nn.Linear):
            assert torch.count_nonzero(m.bias) == 0
    magnitude = head.last_layer.parametrizations.weight.original0
    assert magnitude.requires_grad
    # weight_norm starts g at ‖v‖, so the effective weight equals the initial one.
    torch.testing.assert_close(magnitude.squeeze(1), weights[-1].norm(dim=1))
    head(torch.randn(3, 384)).sum().backward()
    assert magnitude.grad is not None


def test_head_rejects_bad_sizes():
    with pytest.raises(UserError, match="out_dim must be a positive integer"):
        DINOHead(16, out_dim=0)


# ---------------------------------------------------------------- multi-crop


def test_multicrop_runs_one_backbone_call_per_resolution_and_equals_per_view_calls():
    torch.manual_seed(3)
    backbone = TinyBackbone(drop=0.5)
    backbone.reset_classifier(0)
    model = MultiCropModel(backbone, DINOHead(8, out_dim=32, hidden_dim=16, bottleneck_dim=8)).double().eval()
    g = torch.Generator().manual_seed(3)
    views = make_views(4, 3, g, dtype=torch.float64)

    out = model(views)
    assert out.shape == (5 * 4, 32)
    assert backbone.calls == [(8, 3, 16, 16), (12, 3, 8, 8)]  # 2 globals together, 3 locals together

    per_view = torch.cat([model([v]) for v in views])
    torch.testing.assert_close(out, per_view, rtol=1e-12, atol=1e-12)

    backbone.calls.clear()
    model([views[0], views[2], views[1]])  # equal resolutions that are not consecutive stay apart
    assert backbone.calls == [(4, 3, 16, 16), (4, 3, 8, 8), (4, 3, 16, 16)]


def test_multicrop_rejects_a_backbone_that_still_classifies():
    backbone = TinyBackbone(num_classes=10)
    model = MultiCropModel(backbone, DINOHead(8, out_dim=32, hidden_dim=16, bottleneck_dim=8))
    with pytest.raises(ValueError, match="reset_classifier"):
        model([torch.randn(2, 3, 8, 8)])  # head gives [2, 10] logits, not [2, 8] features
    with pytest.raises(ValueError, match="at least one view"):
        model([])


# ---------------------------------------------------------------- loss and centring


@pytest.mark.parametrize("epoch", [0, 3.5, 10, 19])
def test_loss_equals_float64_pair_loop_and_its_gradient(epoch):
    n_crops, batch, dim = 6, 5, 40
    g = torch.Generator().manual_seed(4)
    loss_fn = DINOLoss(dim, n_crops, total_epochs=20).double()
    center = torch.randn(1, dim, generator=g, dtype=torch.float64)
    loss_fn.center.copy_(center)
    student = torch.randn(n_crops * batch, dim, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2 * batch, dim, generator=g, dtype=torch.float64)

    teacher_temp = 0.04 + 0.03 * min(epoch / 10, 1.0)
    expected = reference_dino_loss(student, teacher, center, n_crops, 0.1, teacher_temp)
    loss = loss_fn(student, teacher, epoch)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)

    (grad,) = torch.autograd.grad(loss, student)
    (expected_grad,) = torch.autograd.grad(expected, student)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-14)


def test_loss_upcasts_half_inputs():
    g = torch.Generator().manual_seed(5)
    loss_fn = DINOLoss(16, 4, total_epochs=20)
    student = torch.randn(4 * 3, 16, generator=g).to(torch.bfloat16)
    teacher = torch.randn(2 * 3, 16, generator=g).to(torch.bfloat16)
    loss = loss_fn(student, teacher, 0)
    assert loss.dtype == torch.float32
    expected = reference_dino_loss(student, teacher, torch.zeros(1, 16), 4, 0.1, 0.04)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)


def test_center_update_is_ema_of_teacher_batch_mean_after_the_loss():
    g = torch.Generator().manual_seed(6)
    loss_fn = DINOLoss(12, 3, total_epochs=20, center_momentum=0.9).double()
    expected_center = torch.zeros(1, 12, dtype=torch.float64)
    for step in range(3):
        teacher = torch.randn(2 * 4, 12, generator=g, dtype=torch.float64)
        student = torch.randn(3 * 4, 12, generator=g, dtype=torch.float64)
        # the loss of this step uses the center from before the update
        expected_loss = reference_dino_loss(student, teacher, expected_center, 3, 0.1, 0.04 + 0.003 * step)
        torch.testing.assert_close(loss_fn(student, teacher, step), expected_loss, rtol=1e-12, atol=0)
        expected_center = 0.9 * expected_center + 0.1 * teacher.mean(dim=0, keepdim=True)
        torch.testing.assert_close(loss_fn.center, expected_center, rtol=1e-12, atol=1e-15)
    assert "center" in loss_fn.state_dict()


def _ddp_worker(rank, world_size, init_file, result_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size)
    try:
        dino = small_dino(seed=15)  # identical init on both ranks
        ddp = torch.nn.parallel.DistributedDataParallel(dino)
        views = make_views(3, 2, torch.Generator().manual_seed(100 + rank), dtype=torch.float64)  # ranks differ
        with torch.no_grad():
            teacher_out = dino.teacher(views[:2])
        ddp(views, 0.5).backward()
        torch.save({"teacher_out": teacher_out, "center": dino.loss.center,
                    "grad": dino.student.backbone.stem.weight.grad}, result_dir / f"rank{rank}.pt")
        # both ranks reach teardown together: a rank destroying the group while the other's gloo thread
        # still works aborted once ("terminate called without an active exception")
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_center_is_all_reduced_across_ddp_processes(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, tmp_path / "store", tmp_path), nprocs=2)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    all_teacher_rows = torch.cat([r["teacher_out"] for r in results])  # (2 ranks · 2 views · 3, D)
    assert not torch.equal(results[0]["teacher_out"], results[1]["teacher_out"])
    expected = 0.1 * all_teacher_rows.mean(dim=0, keepdim=True)  # 0.9 · zero center + 0.1 · global mean
    for r in results:
        torch.testing.assert_close(r["center"], expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(results[0]["grad"], results[1]["grad"], rtol=0, atol=0)  # DDP averaged


def test_loss_rejects_mismatched_shapes_and_bad_config():
    loss_fn = DINOLoss(8, 4, total_epochs=20)
    with pytest.raises(ValueError, match=r"student_out must be \[4·3, 8\]"):
        loss_fn(torch.zeros(3 * 3, 8), torch.zeros(2 * 3, 8), 0)
    with pytest.raises(ValueError, match="teacher_out must be"):
        loss_fn(torch.zeros(4 * 3, 8), torch.zeros(5, 8), 0)
    with pytest.raises(ValueError, match=r"epoch must be in \[0, 20\]"):
        loss_fn(torch.zeros(4 * 3, 8), torch.zeros(2 * 3, 8), 21)
    with pytest.raises(UserError, match="n_crops >= 2"):
        DINOLoss(8, 1, total_epochs=20)
    with pytest.raises(UserError, match="teacher_temp must be > 0"):
        DINOLoss(8, 4, total_epochs=20, teacher_temp=0.0)
    with pytest.raises(UserError, match=r"center_momentum must be in \[0, 1\)"):
        DINOLoss(8, 4, total_epochs=20, center_momentum=1.0)


# ---------------------------------------------------------------- schedules


def test_teacher_temperature_schedule():
    loss_fn = DINOLoss(8, 10, total_epochs=200)
    expected = {0: 0.04, 2.5: 0.0475, 5: 0.055, 9: 0.067, 10: 0.07, 11: 0.07, 200: 0.07}
    for epoch, temp in expected.items():
        assert loss_fn.teacher_temp(epoch) == pytest.approx(temp, rel=1e-12), epoch
    assert DINOLoss(8, 10, total_epochs=5, warmup_teacher_temp_epochs=0).teacher_temp(0) == 0.07


def test_momentum_schedule_is_cosine_from_0996_to_1():
    assert momentum_schedule(0, 1000) == pytest.approx(0.996, rel=1e-12)
    assert momentum_schedule(500, 1000) == pytest.approx(0.998, rel=1e-12)
    quarter = 1 - 0.004 * (1 + math.cos(math.pi / 4)) / 2
    assert momentum_schedule(250, 1000) == pytest.approx(quarter, rel=1e-12)
    assert momentum_schedule(1000, 1000) == 1.0
    assert momentum_schedule(2000, 1000) == 1.0
    values = [momentum_schedule(s, 1000) for s in range(0, 1001, 50)]
    assert values == sorted(values)


def test_momentum_schedule_rejects_bad_lengths():
    with pytest.raises(UserError, match="total_steps >= 1"):
        momentum_schedule(0, 0)


# ---------------------------------------------------------------- teacher and the bundled module


def test_make_teacher_is_a_frozen_eval_copy():
    torch.manual_seed(7)
    student = MultiCropModel(TinyBackbone(drop=0.5), DINOHead(8, out_dim=16))
    student.backbone.reset_classifier(0)
    teacher = make_teacher(student)
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert student.training and any(p.requires_grad for p in student.parameters())
    for (name, t), (_, s) in zip(teacher.state_dict().items(), student.state_dict().items(), strict=True):
        assert torch.equal(t, s), name
        assert t.data_ptr() != s.data_ptr(), name


def test_teacher_gets_no_gradient_and_follows_the_ema_exactly():
    dino = small_dino(seed=8, batchnorm=True).train()
    g = torch.Generator().manual_seed(8)
    views = make_views(4, 2, g, dtype=torch.float64)
    dino(views, epoch=1.5).backward()
    assert all(p.grad is None for p in dino.teacher.parameters())
    assert all(not p.requires_grad for p in dino.teacher.parameters())
    trainable = [(n, p) for n, p in dino.student.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trainable)
    # only the fixed weight-norm magnitude is frozen in the student
    frozen = [n for n, p in dino.student.named_parameters() if not p.requires_grad]
    assert frozen == ["head.last_layer.parametrizations.weight.original0"]

    torch.optim.SGD([p for _, p in trainable], lr=0.5).step()  # the student moves away from the teacher
    teacher_before = {n: p.detach().clone() for n, p in dino.teacher.named_parameters()}
    student_now = dict(dino.student.named_parameters())
    momentum = 0.9
    dino.update_teacher(momentum)
    moved = 0
    for name, t in dino.teacher.named_parameters():
        expected = momentum * teacher_before[name] + (1 - momentum) * student_now[name].detach()
        torch.testing.assert_close(t, expected, rtol=1e-14, atol=1e-16, msg=name)
        moved += not torch.equal(t, teacher_before[name])
    assert moved > 0
    # buffers (here BatchNorm running statistics, updated by the student's forward) are copied
    for (name, t), (_, s) in zip(dino.teacher.named_buffers(), dino.student.named_buffers(), strict=True):
        assert torch.equal(t, s), name


def test_ema_update_is_exact_at_momentum_one_and_zero():
    torch.manual_seed(17)
    student = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5))
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(3.0).add_(0.25)
    before = [p.clone() for p in teacher.parameters()]
    ema_update_(teacher, student, 1.0)  # the end of the cosine schedule: the teacher is frozen
    assert all(torch.equal(t, b) for t, b in zip(teacher.parameters(), before, strict=True))
    ema_update_(teacher, student, 0.0)
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters(), strict=True))


def test_ema_update_rejects_a_different_architecture():
    a = nn.Sequential(nn.Linear(2, 2))
    b = nn.Sequential(nn.Identity(), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="same parameter names"):
        ema_update_(a, b, 0.99)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        ema_update_(a, a, 1.5)


def test_dino_forward_is_the_loss_of_student_all_views_vs_teacher_global_views():
    dino = small_dino(seed=9, drop=0.3).train()
    assert not dino.teacher.training and dino.student.training
    g = torch.Generator().manual_seed(9)
    views = make_views(3, 2, g, dtype=torch.float64)
    dino.student.backbone.calls.clear()
    dino.teacher.backbone.calls.clear()
    center = dino.loss.center.clone()

    torch.manual_seed(10)  # the student's dropout draws from the global generator
    loss = dino(views, epoch=4)
    assert dino.teacher.backbone.calls == [(6, 3, 16, 16)]  # teacher: the 2 global views only
    assert dino.student.backbone.calls == [(6, 3, 16, 16), (6, 3, 8, 8)]

    teacher_out = dino.teacher(views[:2])  # eval-mode teacher: deterministic despite dropout
    torch.manual_seed(10)
    student_out = dino.student(views)
    expected = reference_dino_loss(student_out, teacher_out, center, 4, 0.1, 0.04 + 0.03 * 0.4)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)

    with pytest.raises(ValueError, match="built for 4 views per image, got 3"):
        dino(views[:3], epoch=4)


def test_last_layer_grads_are_cancelled_in_epoch_0_only():
    g = torch.Generator().manual_seed(11)
    views = make_views(2, 2, g, dtype=torch.float64)
    for epoch, cancelled in ((0, True), (0.99, True), (1, False), (5, False)):
        dino = small_dino(seed=11)
        dino(views, epoch).backward()
        cancel_last_layer_grads(dino.student.head, epoch)
        direction = dino.student.head.last_layer.parametrizations.weight.original1
        assert (direction.grad is None) == cancelled, epoch
        assert dino.student.head.mlp[0].weight.grad is not None
        assert dino.student.backbone.stem.weight.grad is not None


def test_teacher_backbone_state_dict_loads_by_name_into_a_fresh_backbone():
    dino = small_dino(seed=12, batchnorm=True)
    g = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for p in dino.student.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    dino.update_teacher(0.5)
    state = dino.teacher_backbone_state_dict()

    fresh = TinyBackbone(batchnorm=True).double()
    fresh.reset_classifier(0)
    assert list(state) == list(fresh.state_dict())
    fresh.load_state_dict(state, strict=True)
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, dict(dino.teacher.backbone.state_dict())[name]), name
    assert not torch.equal(state["stem.weight"], dino.student.backbone.stem.weight)  # teacher, not student

    # a fine-tuning model keeps a fresh classifier: exactly its head is reported missing
    classifier = TinyBackbone(num_classes=10, batchnorm=True).double()
    result = classifier.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["head.bias", "head.weight"] and result.unexpected_keys == []


def test_dino_state_dict_round_trip_resumes_exactly():
    dino = small_dino(seed=13)
    g = torch.Generator().manual_seed(13)
    views = make_views(2, 2, g, dtype=torch.float64)
    dino(views, 0)  # moves the center away from zero
    restored = small_dino(seed=14)
    restored.load_state_dict(dino.state_dict())
    assert torch.equal(restored.loss.center, dino.loss.center)
    torch.testing.assert_close(restored(views, 2), dino(views, 2), rtol=0, atol=0)


def test_dino_refuses_a_compiled_backbone():
    backbone = TinyBackbone()
    backbone._orig_mod = nn.Identity()  # what torch.compile's wrapper carries, without compiling
    with pytest.raises(ValueError, match="uncompiled backbone"):
        DINO(backbone, total_epochs=1)


def test_compiled_dino_matches_eager_and_compiles_a_bounded_number_of_times():
    eager = small_dino(seed=16, dtype=torch.float32)
    compiled_dino = small_dino(seed=16, dtype=torch.float32)
    for model in (eager, compiled_dino):
        model.student.backbone.calls = model.teacher.backbone.calls = None
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(compiled_dino, backend="aot_eager")
    g = torch.Generator().manual_seed(16)
    views = make_views(2, 2, g)
    for step, epoch in enumerate((0.0, 0.5, 3.75, 12.5)):  # a float epoch every step
        torch.testing.assert_close(compiled(views, epoch), eager(views, epoch), rtol=1e-5, atol=1e-6)
        for model in (eager, compiled_dino):
            model.update_teacher(momentum_schedule(step, 4))
    # a static first graph, then the epoch becomes dynamic: one graph per side of the τ_t warm-up
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 3


def test_a_tensor_epoch_gives_the_float_epochs_loss_with_one_compiled_graph():
    eager = small_dino(seed=17, dtype=torch.float32)
    compiled_dino = small_dino(seed=17, dtype=torch.float32)
    for model in (eager, compiled_dino):
        model.student.backbone.calls = model.teacher.backbone.calls = None
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(compiled_dino, backend="aot_eager")
    views = make_views(2, 2, torch.Generator().manual_seed(17))
    epoch_t = torch.zeros(())  # the training loop's: filled in place every step
    for step, epoch in enumerate((0.0, 0.5, 3.75, 12.5)):  # both sides of the τ_t warm-up
        epoch_t.fill_(epoch)
        torch.testing.assert_close(compiled(views, epoch_t), eager(views, epoch), rtol=1e-5, atol=1e-6)
        for model in (eager, compiled_dino):
            model.update_teacher(momentum_schedule(step, 4))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("arch", ["vit_tiny", "swin_tiny", "cait_tiny"])
def test_dino_pretrains_a_registered_model_with_half_size_local_crops(arch):
    from fastvit import models

    torch.manual_seed(18)
    model = models.create(arch, img_size=32, num_classes=10, drop_path=0.1)
    dino = DINO(model, total_epochs=2, n_local=2, out_dim=64, hidden_dim=32, bottleneck_dim=16).train()
    views = make_views(2, 2, torch.Generator().manual_seed(18), global_size=32, local_size=16)
    loss = dino(views, epoch=0.5)
    assert torch.isfinite(loss) and 0 < loss.item() < 2 * math.log(64)
    loss.backward()
    grads = [p.grad for p in dino.student.backbone.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        for p in dino.student.parameters():
            p.add_(0.01)
    dino.update_teacher(0.5)

    # fine-tuning: the teacher backbone loads by name; only the fresh classifier is missing
    fresh = models.create(arch, img_size=32, num_classes=10)
    result = fresh.load_state_dict(dino.teacher_backbone_state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["head.bias", "head.weight"] and result.unexpected_keys == []
    loaded = fresh.state_dict()
    for name, tensor in dino.teacher_backbone_state_dict().items():
        assert torch.equal(loaded[name], tensor), name
