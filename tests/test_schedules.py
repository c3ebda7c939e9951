"""The per-iteration cosine schedules of SPEC §3 and §4."""

import math

import pytest

from fastvit.errors import UserError
from fastvit.schedules import cosine_schedule


def test_lr_schedule_warms_up_30_epochs_then_cosine_to_1e6():
    steps_per_epoch, epochs, base = 10, 200, 1e-4 * 512 / 256
    lr_at = cosine_schedule(base, 1e-6, epochs * steps_per_epoch, warmup_steps=30 * steps_per_epoch)
    assert lr_at(0) == 0.0
    assert lr_at(150) == pytest.approx(base / 2, rel=1e-12)
    assert lr_at(300) == pytest.approx(base, rel=1e-12)
    assert lr_at(300 + 850) == pytest.approx((base + 1e-6) / 2, rel=1e-12)  # half-way through the cosine
    assert lr_at(2000) == pytest.approx(1e-6, rel=1e-12)
    assert lr_at(1999) > 1e-6
    assert cosine_schedule(1.0, 0.0, 10, warmup_steps=2, warmup_start=0.5)(1) == pytest.approx(0.75)


def test_weight_decay_schedule_rises_by_cosine_from_004_to_04():
    wd_at = cosine_schedule(0.04, 0.4, 1000)
    assert wd_at(0) == pytest.approx(0.04, rel=1e-12)
    assert wd_at(500) == pytest.approx(0.22, rel=1e-12)
    assert wd_at(250) == pytest.approx(0.4 - 0.36 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-12)
    assert wd_at(1000) == pytest.approx(0.4, rel=1e-12)


def test_finetune_lr_from_1e6_over_10_epochs_then_cosine_to_1e6():
    lr_at = cosine_schedule(1e-3, 1e-6, 1000, warmup_steps=100, warmup_start=1e-6)
    assert lr_at(0) == pytest.approx(1e-6) and lr_at(100) == pytest.approx(1e-3) and lr_at(1000) == pytest.approx(1e-6)


def test_a_run_shorter_than_its_warmup_only_warms_up():
    lr_at = cosine_schedule(1.0, 0.0, total_steps=30, warmup_steps=60)
    assert lr_at(30) == pytest.approx(0.5)


def test_bad_lengths():
    with pytest.raises(UserError, match="total_steps >= 1"):
        cosine_schedule(1.0, 0.0, total_steps=0)
    with pytest.raises(ValueError, match="step must be >= 0"):
        cosine_schedule(1.0, 0.0, 10)(-1)
