"""Per-iteration schedules (learning rate, weight decay): pure functions of the step."""

import math
from collections.abc import Callable

from fastvit.errors import UserError


def cosine_schedule(
    base: float, final: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0,
    cosine_from_step_0: bool = False,
) -> Callable[[float], float]:
    """A per-step value: linear warmup_start → base over warmup_steps, then cosine base → final.

    Paper A: lr = cosine_schedule(1e-4·batch/256, 1e-6, total, warmup_steps=30 epochs of steps);
    weight decay = cosine_schedule(0.04, 0.4, total) (a cosine that rises). The value is ``base``
    exactly at ``warmup_steps`` and ``final`` at ``total_steps`` and beyond. A pure function of the step,
    so resuming a run needs only the step counter.

    ``cosine_from_step_0``: the cosine's progress is step / total_steps, the warm-up overlaying its start
    (timm's CosineLRScheduler with warmup_prefix=False, paper B's schedule); else (DINO, paper A) it is
    (step − warmup_steps) / (total_steps − warmup_steps).
    """
    if warmup_steps < 0 or total_steps < 1:
        raise UserError(f"schedule needs warmup_steps >= 0 and total_steps >= 1, got warmup_steps={warmup_steps}, "
                        f"total_steps={total_steps}")
    decay_steps = max(total_steps - warmup_steps, 1)  # a run shorter than its warm-up never decays

    def value_at(step: float) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step < warmup_steps:
            return warmup_start + (base - warmup_start) * step / warmup_steps
        progress = min(step / total_steps if cosine_from_step_0 else (step - warmup_steps) / decay_steps, 1.0)
        return final + (base - final) * (1.0 + math.cos(math.pi * progress)) / 2.0

    return value_at
