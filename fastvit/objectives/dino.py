"""DINO self-distillation for paper A's self-supervised initialization (SPEC §3).

A student (backbone + projection head) sees every multi-crop view; a teacher with the same
architecture sees only the 2 global views, receives no gradient and follows the student as an
exponential moving average (EMA). The student learns to match the teacher's centred, sharpened
softmax on every (teacher view, student view) pair of different views.

Typical use in a pretraining loop (`cosine_schedule` from fastvit.schedules)::

    backbone = fastvit.models.create("vit", img_size=32, num_classes=0, drop_path=0.1)
    dino = DINO(backbone, total_epochs=200, n_local=8)
    lr_at = cosine_schedule(1e-4 * batch / 256, 1e-6, total_steps, warmup_steps=30 * steps_per_epoch)
    wd_at = cosine_schedule(0.04, 0.4, total_steps)
    for step, views in ...:                      # views: 2 global + 8 local image batches
        epoch = step / steps_per_epoch            # a float epoch gives a smooth τ_t ramp
        loss = dino(views, epoch)
        loss.backward()
        cancel_last_layer_grads(dino.student.head, epoch)
        clip, optimizer.step(), optimizer.zero_grad(set_to_none=True)
        dino.update_teacher(momentum_schedule(step, total_steps))
    torch.save(dino.teacher_backbone_state_dict(), "ssl_init.pt")   # loaded by name for fine-tuning
"""

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from fastvit.errors import UserError

GLOBAL_CROPS = 2  # the teacher sees this many views: the first GLOBAL_CROPS of every list of views


# ---------------------------------------------------------------- projection head


class DINOHead(nn.Module):
    """Projection head: 3-layer MLP → L2-normalize → weight-normalized linear layer without bias.

    Args:
        in_dim: backbone feature width (192 for ViT/CaiT, 384 for the small Swin).
        out_dim: number of prototypes the softmax runs over.
        hidden_dim: width of the two hidden MLP layers.
        bottleneck_dim: width of the L2-normalized bottleneck.
        norm_last_layer: fix the weight-norm magnitude of the last layer to 1, so every output unit
            is a cosine similarity between the bottleneck and a unit-norm prototype. The DINO paper
            found this stabilises training; with False the magnitude is learned.

    The last layer uses ``torch.nn.utils.parametrizations.weight_norm`` (dim 0): its parameters are
    ``last_layer.parametrizations.weight.original0`` (magnitude g, shape [out_dim, 1]) and
    ``...original1`` (direction v, [out_dim, bottleneck_dim]); the weight is g · v / ‖v‖ per row.
    With ``norm_last_layer`` g is all ones and ``requires_grad=False``: optimizers must skip
    parameters that do not require grad.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 1024,
        hidden_dim: int = 512,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim),
                            ("bottleneck_dim", bottleneck_dim)):
            if value < 1:
                raise UserError(f"DINO head {name} must be a positive integer, got {value}")
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        for layer in (*self.mlp, last):
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        # weight_norm initialises g to ‖v‖ per row; overwritten below when the magnitude is fixed.
        self.last_layer = weight_norm(last, dim=0)
        if norm_last_layer:
            magnitude = self.last_layer.parametrizations.weight.original0
            with torch.no_grad():
                magnitude.fill_(1.0)
            magnitude.requires_grad_(False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, in_dim] → [B, out_dim] (logits before the temperature-scaled softmax)."""
        x = self.mlp(features)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


# ---------------------------------------------------------------- multi-crop wrapper


class MultiCropModel(nn.Module):
    """Backbone + head over a list of views of possibly different resolutions.

    ``backbone(x)`` must return pooled features [B, num_features] (a fastvit model after
    ``reset_classifier(0)``). Consecutive views of equal shape are concatenated and run through the
    backbone in one call (2 calls for 2 global + 8 local crops instead of 10): fewer, larger
    kernels. The head is resolution independent and runs once on all features.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """views: list of [B_i, C, H_i, W_i] → [sum(B_i), out_dim], rows in the order of the views."""
        if len(views) == 0:
            raise ValueError("MultiCropModel needs at least one view")
        features = []
        start = 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].shape[1:] == views[start].shape[1:]:
                end += 1
            batch = torch.cat(list(views[start:end])) if end - start > 1 else views[start]
            pooled = self.backbone(batch)  # (sum of B_i in the group, num_features)
            width = getattr(self.backbone, "num_features", pooled.shape[-1])
            if pooled.shape != (batch.shape[0], width):
                raise ValueError(
                    f"the backbone must return pooled features [{batch.shape[0]}, {width}], got "
                    f"{tuple(pooled.shape)} (call reset_classifier(0))"
                )
            features.append(pooled)
            start = end
        return self.head(torch.cat(features) if len(features) > 1 else features[0])


# ---------------------------------------------------------------- loss with centring


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student, over view pairs.

    loss = mean over (i, j), i ∈ teacher views, j ∈ student views, i ≠ j, of
           mean_b  Σ_d −softmax((t_i − center) / τ_t)[b, d] · log_softmax(s_j / τ_s)[b, d]
    i.e. GLOBAL_CROPS · n_crops − GLOBAL_CROPS terms (18 for 2 global + 8 local views).

    τ_t(epoch) = warmup_teacher_temp + (teacher_temp − warmup_teacher_temp) · min(epoch / W, 1)
    with W = warmup_teacher_temp_epochs; a float epoch (step / steps_per_epoch) ramps it smoothly.
    (The public DINO code uses a per-epoch linspace that reaches teacher_temp at epoch W − 1.)

    After the loss, ``center`` ← m · center + (1 − m) · mean of the teacher outputs over the global
    batch (summed across processes with all_reduce when torch.distributed is initialized). The
    update is device-side only: no host synchronisation.
    """

    center: torch.Tensor

    def __init__(
        self,
        out_dim: int,
        n_crops: int,
        *,
        total_epochs: float,
        student_temp: float = 0.1,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: float = 10,
        center_momentum: float = 0.9,
    ):
        super().__init__()
        if n_crops < GLOBAL_CROPS:
            raise UserError(f"DINO needs n_crops >= {GLOBAL_CROPS} (the global views), got {n_crops}")
        for name, value in (("student_temp", student_temp), ("warmup_teacher_temp", warmup_teacher_temp),
                            ("teacher_temp", teacher_temp), ("total_epochs", total_epochs)):
            if not value > 0:
                raise UserError(f"DINO {name} must be > 0, got {value}")
        if warmup_teacher_temp_epochs < 0:
            raise UserError(f"DINO warmup_teacher_temp_epochs must be >= 0, got {warmup_teacher_temp_epochs}")
        if not 0.0 <= center_momentum < 1.0:
            raise UserError(f"DINO center_momentum must be in [0, 1), got {center_momentum}")
        self.n_crops = n_crops
        self.total_epochs = total_epochs
        self.student_temp = student_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.final_teacher_temp = teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.center_momentum = center_momentum
        # Persistent: exact resume needs the running center.
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temp(self, epoch: float | torch.Tensor) -> float | torch.Tensor:
        """τ_t at a (possibly fractional) epoch: a linear warm-up, then constant. A 0-d tensor epoch (the
        training loop's, on the device) gives a tensor τ_t without a host sync or a range check, and one
        compiled graph for every epoch."""
        if isinstance(epoch, torch.Tensor):
            if self.warmup_teacher_temp_epochs == 0:
                return self.final_teacher_temp
            progress = (epoch / self.warmup_teacher_temp_epochs).clamp(max=1.0)
            return self.warmup_teacher_temp + (self.final_teacher_temp - self.warmup_teacher_temp) * progress
        if not 0 <= epoch <= self.total_epochs:
            raise ValueError(f"epoch must be in [0, {self.total_epochs}], got {epoch}")
        if epoch >= self.warmup_teacher_temp_epochs:
            return self.final_teacher_temp
        progress = epoch / self.warmup_teacher_temp_epochs
        return self.warmup_teacher_temp + (self.final_teacher_temp - self.warmup_teacher_temp) * progress

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, epoch: float) -> torch.Tensor:
        """student_out [n_crops·B, D] and teacher_out [GLOBAL_CROPS·B, D], rows grouped by view."""
        if teacher_out.ndim != 2 or teacher_out.shape[0] % GLOBAL_CROPS:
            raise ValueError(f"teacher_out must be [{GLOBAL_CROPS}·B, D], got {tuple(teacher_out.shape)}")
        batch = teacher_out.shape[0] // GLOBAL_CROPS
        if student_out.shape != (self.n_crops * batch, teacher_out.shape[1]):
            raise ValueError(
                f"student_out must be [{self.n_crops}·{batch}, {teacher_out.shape[1]}] for teacher_out "
                f"{tuple(teacher_out.shape)}, got {tuple(student_out.shape)}"
            )
        # Softmax in at least fp32 even under autocast; float64 inputs stay float64 (tests).
        dtype = torch.promote_types(student_out.dtype, torch.float32)
        teacher_out = teacher_out.detach().to(dtype)
        student_logp = F.log_softmax(student_out.to(dtype) / self.student_temp, dim=-1)
        teacher_p = F.softmax((teacher_out - self.center.to(dtype)) / self.teacher_temp(epoch), dim=-1)

        student_logp = student_logp.view(self.n_crops, batch, -1)  # (n_crops, B, D)
        teacher_p = teacher_p.view(GLOBAL_CROPS, batch, -1)  # (GLOBAL_CROPS, B, D)
        # pair_ce[i, j] = mean_b of −Σ_d teacher_p[i] · student_logp[j]: all pairs in one contraction.
        pair_ce = -torch.einsum("ibd,jbd->ij", teacher_p, student_logp) / batch  # (GLOBAL_CROPS, n_crops)
        same_view = torch.diagonal(pair_ce).sum()  # teacher view i and student view i are the same image
        loss = (pair_ce.sum() - same_view) / (GLOBAL_CROPS * self.n_crops - GLOBAL_CROPS)

        self.update_center(teacher_out)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """center ← m · center + (1 − m) · mean of teacher_out over every process's rows."""
        total = teacher_out.sum(dim=0, keepdim=True, dtype=self.center.dtype)  # (1, D)
        rows = teacher_out.shape[0]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
            rows *= torch.distributed.get_world_size()
        self.center.mul_(self.center_momentum).add_(total, alpha=(1.0 - self.center_momentum) / rows)


# ---------------------------------------------------------------- EMA teacher


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of the student with no gradient, in eval mode.

    Eval mode turns off the teacher's drop path and dropout (the teacher's targets should come from
    the full network) and makes any BatchNorm use running statistics; a caller that later switches
    a parent module to train mode must put the teacher back in eval mode (``DINO.train`` does).
    """
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher ← momentum · teacher + (1 − momentum) · student for every parameter, in place.

    One fused multi-tensor call: ``_foreach_lerp_`` computes teacher + (1 − m)(student − teacher),
    the value of ``_foreach_mul_`` then ``_foreach_add_`` in one pass over memory instead of two
    (several times faster on CPU for ViT's 3.4M parameters), exact at m = 1 and m = 0.
    Buffers (BatchNorm statistics, constant masks and indices) are copied from the student: an
    exact copy keeps constant buffers bit-identical, where averaging could drift them by rounding.
    Both modules must have the same parameter names.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    teacher_named = list(teacher.named_parameters())
    student_named = list(student.named_parameters())
    if [name for name, _ in teacher_named] != [name for name, _ in student_named]:
        raise ValueError("teacher and student must have the same parameter names (use make_teacher)")
    teacher_params = [p for _, p in teacher_named]
    student_params = [p.detach() for _, p in student_named]
    torch._foreach_lerp_(teacher_params, student_params, 1.0 - momentum)
    teacher_buffers = list(teacher.buffers())
    if teacher_buffers:
        torch._foreach_copy_(teacher_buffers, list(student.buffers()))


def momentum_schedule(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """Teacher EMA momentum: cosine from ``base`` at step 0 to ``final`` at ``total_steps``."""
    if total_steps < 1:
        raise UserError(f"momentum schedule needs total_steps >= 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    progress = min(step / total_steps, 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


# ---------------------------------------------------------------- schedules used by pretraining


def cancel_last_layer_grads(head: DINOHead, epoch: float, freeze_epochs: float = 1) -> None:
    """Drop the gradients of the head's last layer while ``epoch < freeze_epochs``.

    Setting ``.grad = None`` (not zero) makes AdamW skip those parameters entirely: no update from
    stale moments and no weight decay. Freezing the prototypes during the first epoch keeps the
    student from collapsing onto them before the features have moved (DINO).
    """
    if epoch < freeze_epochs:
        for param in head.last_layer.parameters():
            param.grad = None


# ---------------------------------------------------------------- everything together


class DINO(nn.Module):
    """Student, EMA teacher and loss for DINO pretraining of one backbone.

    Args:
        backbone: a fastvit model (``num_features``, ``reset_classifier``); its classifier is
            replaced by the identity so that ``backbone(x)`` returns pooled features and no unused
            parameter reaches the optimizer or DDP. Pass the uncompiled module (compile the
            backbones in place with ``dino.student.backbone.compile()`` if wanted).
        total_epochs: length of the pretraining run (bounds the epochs the loss accepts).
        n_local: local views per image; every list of views holds GLOBAL_CROPS global views first,
            then the n_local local ones.
        out_dim, hidden_dim, bottleneck_dim, norm_last_layer: see DINOHead.
        student_temp, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs,
        center_momentum: see DINOLoss.
        teacher_drop_path: the teacher keeps the student's stochastic depth on while training (paper A builds
            its teacher with drop path 0.1 and never puts it in eval mode); False: the teacher runs in eval
            mode, the full network giving the targets (DINO's own ViT teacher has no drop path).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        total_epochs: float,
        n_local: int = 8,
        out_dim: int = 1024,
        hidden_dim: int = 512,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
        student_temp: float = 0.1,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: float = 10,
        center_momentum: float = 0.9,
        teacher_drop_path: bool = False,
    ):
        super().__init__()
        self.teacher_drop_path = teacher_drop_path
        if hasattr(backbone, "_orig_mod"):
            raise ValueError("pass the uncompiled backbone to DINO: compiled wrappers rename state_dict keys")
        backbone.reset_classifier(0)
        head = DINOHead(backbone.num_features, out_dim, hidden_dim, bottleneck_dim, norm_last_layer)
        self.student = MultiCropModel(backbone, head)
        self.teacher = make_teacher(self.student).train(teacher_drop_path)
        if n_local < 0:
            raise UserError(f"DINO n_local (local crops per image) must be >= 0, got {n_local}")
        self.loss = DINOLoss(
            out_dim,
            GLOBAL_CROPS + n_local,
            total_epochs=total_epochs,
            student_temp=student_temp,
            warmup_teacher_temp=warmup_teacher_temp,
            teacher_temp=teacher_temp,
            warmup_teacher_temp_epochs=warmup_teacher_temp_epochs,
            center_momentum=center_momentum,
        )

    def train(self, mode: bool = True) -> "DINO":
        super().train(mode)
        self.teacher.train(mode and self.teacher_drop_path)  # eval mode: no drop path in the teacher
        return self

    def forward(self, views: Sequence[torch.Tensor], epoch: float) -> torch.Tensor:
        """views: GLOBAL_CROPS global batches first, then the local ones; returns the scalar loss."""
        if len(views) != self.loss.n_crops:
            raise ValueError(f"DINO was built for {self.loss.n_crops} views per image, got {len(views)}")
        with torch.no_grad():
            teacher_out = self.teacher(views[:GLOBAL_CROPS])
        student_out = self.student(views)
        return self.loss(student_out, teacher_out, epoch)

    def update_teacher(self, momentum: float) -> None:
        """One EMA step of the teacher towards the student (call after optimizer.step())."""
        ema_update_(self.teacher, self.student, momentum)

    def teacher_backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The teacher backbone's weights under the backbone's own names (no head): the SSL init."""
        return self.teacher.backbone.state_dict()
