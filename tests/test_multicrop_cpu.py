"""The fused numba MultiCrop executor against the batched torch executor (same seed, same views).

Bound: the two executors draw identical parameters and differ only in float32 summation order (the
resampling matmuls, channel means, blur convolutions), so normalized views agree within TOL = 1e-3
(~0.06 grey levels before normalization; measured ~5e-6).
"""

import pytest
import torch

from fastvit.errors import UserError
from fastvit.loaders import augment as A
from fastvit.loaders import multicrop_cpu as M

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
TOL = 1e-3
NO_RANDOM_OPS = dict(jitter_p=0.0, gray_p=0.0, blur_p=(0.0, 0.0, 0.0), solarize_p=0.0)


def images(b, c, h, w, seed=0):
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def both_executors(monkeypatch, mc, x, seed=7):
    """(torch views, fused views); also checks that both consumed the generator identically."""
    out = []
    states = []
    for executor in ("torch", "fused"):
        monkeypatch.setenv("FASTVIT_AUGMENT", executor)
        g = torch.Generator().manual_seed(seed)
        out.append(mc(x, g))
        states.append(g.get_state())
    assert torch.equal(states[0], states[1])
    return out


def assert_same_views(ref, got):
    assert [v.shape for v in got] == [v.shape for v in ref]
    assert all(v.dtype == torch.float32 for v in got)
    for r, v in zip(ref, got, strict=True):
        assert float((r - v).abs().max()) <= TOL


@pytest.mark.parametrize("c, side, sizes, n_local", [
    (3, 32, (32, 16), 8),
    (1, 32, (32, 16), 8),
    (1, 28, (24, 12), 2),
    (3, 28, (24, 12), 0),
    (3, 12, (8, 4), 2),  # blur radius 6 capped to the 4-px local views
    (3, 20, (32, 16), 2),  # global views upsample, locals mostly shrink (antialiased)
], ids=["rgb32", "gray32", "gray28-24-12", "rgb28-no-locals", "tiny", "upsample"])
def test_fused_equals_torch_with_default_probabilities(monkeypatch, c, side, sizes, n_local):
    mean, std = (MEAN, STD) if c == 3 else ((0.5,), (0.25,))
    mc = A.MultiCrop(*sizes, n_local=n_local, mean=mean, std=std)
    x = images(24, c, side, side)
    ref, got = both_executors(monkeypatch, mc, x)
    assert len(got) == 2 + n_local
    assert [v.shape[-1] for v in got] == [sizes[0]] * 2 + [sizes[1]] * n_local
    assert_same_views(ref, got)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("probabilities", [
    NO_RANDOM_OPS,
    dict(jitter_p=1.0, gray_p=1.0, blur_p=(1.0, 1.0, 1.0), solarize_p=1.0),
    {**NO_RANDOM_OPS, "jitter_p": 1.0},
    {**NO_RANDOM_OPS, "jitter_p": 1.0, "jitter": (0.4, 0.0, 0.0, 0.0)},
    {**NO_RANDOM_OPS, "jitter_p": 1.0, "jitter": (0.0, 0.4, 0.0, 0.0)},
    {**NO_RANDOM_OPS, "jitter_p": 1.0, "jitter": (0.0, 0.0, 0.8, 0.0)},
    {**NO_RANDOM_OPS, "jitter_p": 1.0, "jitter": (0.0, 0.0, 0.0, 0.5)},
    {**NO_RANDOM_OPS, "gray_p": 1.0},
    {**NO_RANDOM_OPS, "blur_p": (1.0, 1.0, 1.0)},
    {**NO_RANDOM_OPS, "solarize_p": 1.0},
], ids=["all-off", "all-on", "jitter", "brightness", "contrast", "saturation", "hue", "gray", "blur", "solarize"])
def test_fused_equals_torch_with_each_op_on_every_sample(monkeypatch, c, probabilities):
    mean, std = (MEAN, STD) if c == 3 else ((0.5,), (0.25,))
    mc = A.MultiCrop(32, 16, n_local=2, mean=mean, std=std, **probabilities)
    ref, got = both_executors(monkeypatch, mc, images(32, c, 32, 32, seed=1))
    assert_same_views(ref, got)


def test_fused_all_ops_off_is_the_normalized_crop(monkeypatch):
    # nothing but crop + flip + normalization: compare with an independent F.interpolate per view
    mc = A.MultiCrop(32, 16, n_local=1, mean=(0.0,) * 3, std=(1 / 255,) * 3, **NO_RANDOM_OPS)
    x = images(4, 3, 32, 32, seed=2)
    monkeypatch.setenv("FASTVIT_AUGMENT", "fused")
    views = mc(x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    d = mc.draw(x.shape, 2, mc.global_scale, torch.tensor([0.0] * 8), torch.tensor([0.0] * 8), g, "cpu")
    for k in range(8):
        v, i = divmod(k, 4)
        t, l, h, w = (int(d.top[k]), int(d.left[k]), int(d.height[k]), int(d.width[k]))
        crop = x[i:i + 1, :, t:t + h, l:l + w].float()
        ref = torch.nn.functional.interpolate(crop, size=(32, 32), mode="bicubic", align_corners=False,
                                              antialias=h > 32 or w > 32).clamp(0, 255)[0]
        ref = ref.flip(2) if bool(d.flip[k]) else ref
        assert float((views[v][i] - ref).abs().max()) < 2e-3  # 0..255 units


@pytest.mark.parametrize("bicubic", [True, False])
@pytest.mark.parametrize("length, out", [(20, 32), (32, 32), (26, 16), (9, 16), (31, 7)])
def test_resample_taps_are_resample_weights(bicubic, length, out):
    start, in_size = 32 - length, 32
    for antialias in (False, True):
        for reverse in (False, True):
            idx, w = M.resample_taps(start, length, in_size, out, bicubic, antialias, reverse)
            dense = torch.zeros(out, in_size).scatter_add_(1, torch.from_numpy(idx), torch.from_numpy(w))
            ref = A.resample_weights(torch.tensor([start]), torch.tensor([length]), torch.tensor([in_size]), out,
                                     mode="bicubic" if bicubic else "bilinear",
                                     antialias=torch.tensor([antialias]), reverse=torch.tensor([reverse]))[0]
            assert torch.allclose(dense, ref, atol=1e-6, rtol=0)


def test_bilinear_interpolation(monkeypatch):
    mc = A.MultiCrop(32, 16, n_local=2, mean=MEAN, std=STD, interpolation="bilinear")
    ref, got = both_executors(monkeypatch, mc, images(16, 3, 32, 32))
    assert_same_views(ref, got)


def test_executor_switch(monkeypatch):
    monkeypatch.delenv("FASTVIT_AUGMENT", raising=False)
    assert A._use_fused(torch.device("cpu")) and not A._use_fused(torch.device("cuda"))
    monkeypatch.setenv("FASTVIT_AUGMENT", "Torch")
    assert not A._use_fused(torch.device("cpu"))
    monkeypatch.setenv("FASTVIT_AUGMENT", "fused")
    with pytest.raises(UserError, match="FASTVIT_AUGMENT=fused runs on the CPU, but the images are on cuda"):
        A._use_fused(torch.device("cuda"))
    monkeypatch.setenv("FASTVIT_AUGMENT", "numba")
    with pytest.raises(UserError, match="augmentation executor 'numba' is invalid"):
        A.MultiCrop(32, 16, mean=MEAN, std=STD)(images(2, 3, 32, 32), torch.Generator())


def test_fused_views_do_not_depend_on_the_thread_count(monkeypatch):
    mc = A.MultiCrop(32, 16, n_local=2, mean=MEAN, std=STD)
    x = images(16, 3, 32, 32)
    monkeypatch.setenv("FASTVIT_AUGMENT", "fused")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = mc(x, torch.Generator().manual_seed(5))
        torch.set_num_threads(2)
        two = mc(x, torch.Generator().manual_seed(5))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


def test_fused_accepts_a_channels_last_batch(monkeypatch):
    mc = A.MultiCrop(32, 16, n_local=2, mean=MEAN, std=STD)
    x = images(8, 3, 32, 32)
    monkeypatch.setenv("FASTVIT_AUGMENT", "fused")
    plain = mc(x, torch.Generator().manual_seed(4))
    strided = mc(x.contiguous(memory_format=torch.channels_last), torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(plain, strided, strict=True))
