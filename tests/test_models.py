"""Model zoo: registry, shapes, gradients, save/load, attention backends, parameter counts, bad input."""

import io

import pytest
import torch

from fastvit import models
from fastvit.errors import UserError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: intra-op threads cost more than they give, and thrash on a loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The full 224-px models (paper B) are heavy on this CPU: their default size only (batch 2, one thread).
HEAVY = {"swin_t", "swin_t_p2_w4", "cvt_13", "t2t_vit_14", "resnet50"}
# Paper A's full models: the sizes paper A trains at; the tiny variants: every size (cheap).
PAPER_A = {"vit", "swin", "cait"}


def _cases():
    for name in models.names():
        if name in HEAVY:
            sizes = [models.default_img_size(name)]
        elif name in PAPER_A:
            sizes = [32, 64]
        else:
            sizes = [32, 64, 224]
        yield from ((name, s) for s in sizes)


CASES = list(_cases())


def _make(name, img_size, num_classes=10, seed=0, **kw):
    torch.manual_seed(seed)
    return models.create(name, img_size=img_size, num_classes=num_classes, **kw)


def _images(n, chans, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, chans, size, size, generator=g)


def _params(m):
    return sum(p.numel() for p in m.parameters())


def test_registry_cases_cover_every_name():
    assert {n for n, _ in CASES} == set(models.names())
    assert {"vit", "vit_tiny", "swin", "cait", "swin_t", "cvt_13", "t2t_vit_14"} <= set(models.names())


@pytest.mark.parametrize("name,img_size", CASES)
def test_forward_backward_shapes_and_finite_grads(name, img_size):
    m = _make(name, img_size)
    x = _images(2, 3, img_size)
    pooled, grid = m.forward_features(x)
    assert pooled.shape == (2, m.num_features)
    assert grid.shape == (2, *models.grid_shape(name, img_size))
    assert grid.shape[-1] == m.grid_dims[-1] and m.grid_shape == models.grid_shape(name, img_size)
    logits = m.forward_head(pooled)
    assert logits.shape == (2, 10)
    torch.testing.assert_close(m(x), logits)
    (logits.square().mean() + grid.mean()).backward()
    no_signal = one_key_query_key_params(m, name, img_size)
    for n, p in m.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
        if n in no_signal:
            # softmax over a single key is 1 whatever q and k are: their gradient is 0 up to rounding, which
            # is ~eps * D * |v| |k| times the upstream gradient (the v projection's): bounded with slack 2^10
            upstream = max(m.get_parameter(v).grad.abs().max() for v in no_signal_upstream(no_signal))
            assert p.grad.abs().max() <= 2**10 * torch.finfo(torch.float32).eps * upstream, n
        else:
            assert p.grad.abs().sum() > 0, n  # every parameter receives signal: no dead branch


def no_signal_upstream(no_signal):
    """The v-projection parameters beside the given q/k ones (their gradient carries the same upstream)."""
    return {n.replace(".attn.q.", ".attn.v.").replace(".attn.k.", ".attn.v.") for n in no_signal}


def one_key_query_key_params(m, name, img_size):
    """q/k projection parameters of CvT's last stage when its grid is one token (cvt_tiny at 32 px)."""
    if not name.startswith("cvt") or models.grid_shape(name, img_size)[:2] != (1, 1):
        return set()
    last = f"stages.{len(m.stages) - 1}."
    return {n for n, _ in m.named_parameters() if n.startswith(last) and (".attn.q." in n or ".attn.k." in n)}


# the heavy models share their code (and state-dict layout) with the tiny variants tested here
@pytest.mark.parametrize("name", [n for n in models.names() if n not in HEAVY])
def test_state_dict_round_trip(name):
    img_size = 32
    m = _make(name, img_size, seed=1).eval()
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    other = _make(name, img_size, seed=2).eval()
    x = _images(1, 3, 32)  # every arch takes 32 px; the state dict does not depend on the input size
    assert not torch.equal(m(x), other(x))  # different seeds really differ
    buf.seek(0)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(m(x), other(x))


@pytest.mark.parametrize("name", [n for n in models.names() if n not in HEAVY])
def test_drop_path_is_active_in_training_only(name):
    m = _make(name, 32, drop_path=0.5)
    x = _images(4, 3, 32)
    m.train()
    torch.manual_seed(0)
    a = m.forward_features(x)[1]  # the grid: CaiT's logits barely see the blocks (LayerScale 1e-5)
    torch.manual_seed(1)
    assert not torch.equal(a, m.forward_features(x)[1])  # different drop masks
    m.eval()
    torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)


@pytest.mark.parametrize("branch_dtype", [torch.float64, torch.bfloat16])
def test_drop_path_residual_is_x_plus_the_scaled_kept_branch(branch_dtype):
    """residual(x, branch) = x + mask * branch / keep with the same draw as forward, the scale unrounded
    even when the branch is bf16 (1/0.9 in bf16 is 1.109: a 0.16% bias on every kept sample)."""
    from fastvit.models.layers import DropPath

    dp = DropPath(0.1).train()
    x = torch.randn(64, 5, 7, dtype=torch.float64)
    branch = torch.randn(64, 5, 7, dtype=torch.float64).to(branch_dtype)
    torch.manual_seed(3)
    dropped = dp(torch.ones(64, 1, 1, dtype=torch.float64))  # the draw: 0 or 1/keep per sample
    kept = dropped.flatten() > 0
    assert 0 < int(kept.sum()) < 64
    torch.manual_seed(3)
    out = dp.residual(x, branch)
    assert out.dtype == torch.float64
    expected = x + branch.double() * kept.double().view(-1, 1, 1) / 0.9
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-15)  # bf16-rounded 1/keep: 1.6e-3 off
    dp.eval()
    assert torch.equal(dp.residual(x, branch), x + branch)


def test_vit_matches_float64_reference_forward():
    """The ViT forward equals a from-scratch float64 recomputation using only the state dict."""
    m = _make("vit_tiny", 16, num_classes=5, depth=2).double().eval()
    x = _images(2, 3, 16).double()
    sd = m.state_dict()
    D, H = 96, 3
    p = 4
    patches = x.unfold(2, p, p).unfold(3, p, p)  # (B, C, 4, 4, p, p)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(2, 16, 3 * p * p)
    t = patches @ sd["patch_embed.proj.weight"].reshape(D, -1).T + sd["patch_embed.proj.bias"]
    t = torch.cat([sd["cls_token"].expand(2, -1, -1), t], 1) + sd["pos_embed"]

    def ln(z, pre):
        return torch.nn.functional.layer_norm(z, (D,), sd[pre + ".weight"], sd[pre + ".bias"], 1e-6)

    def lin(z, pre):
        return z @ sd[pre + ".weight"].T + sd[pre + ".bias"]

    for i in range(2):
        b = f"blocks.{i}"
        qkv = lin(ln(t, b + ".norm1"), b + ".attn.qkv").reshape(2, 17, 3, H, D // H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / (D // H) ** 0.5, -1) @ v
        t = t + lin(a.transpose(1, 2).reshape(2, 17, D), b + ".attn.proj")
        h = torch.nn.functional.gelu(lin(ln(t, b + ".norm2"), b + ".mlp.fc1"))
        t = t + lin(h, b + ".mlp.fc2")
    t = ln(t, "norm")
    expected = lin(t[:, 0], "head")
    torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-10)
    _, grid = m.forward_features(x)
    torch.testing.assert_close(grid, t[:, 1:].reshape(2, 4, 4, D), rtol=1e-10, atol=1e-10)


def test_vit_interpolates_pos_embed_for_half_size_crops():
    m = _make("vit", 32).eval()
    pooled, grid = m.forward_features(_images(2, 3, 16))
    assert grid.shape == (2, 4, 4, 192)
    # at the native size the embedding is used unchanged; at half size it is bicubic-resized
    from fastvit.models.layers import resize_pos_embed

    pos = m.pos_embed[:, 1:]
    assert resize_pos_embed(pos, (8, 8), (8, 8)) is pos
    small = resize_pos_embed(pos, (8, 8), (4, 4))
    ref = torch.nn.functional.interpolate(
        pos.reshape(1, 8, 8, 192).permute(0, 3, 1, 2), size=(4, 4), mode="bicubic", align_corners=False
    )
    torch.testing.assert_close(small, ref.permute(0, 2, 3, 1).reshape(1, 16, 192))


def test_vit_last_attention_is_a_distribution():
    m = _make("vit", 32).eval()
    a = m.last_attention(_images(2, 3, 32))
    assert a.shape == (2, 12, 65, 65)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 12, 65))


@pytest.mark.parametrize("name", [n for n in models.names() if n not in HEAVY])
def test_reset_classifier_zero_returns_pooled_features(name):
    m = _make(name, 32).eval().double()
    x = _images(2, 3, 32).double()
    pooled, _ = m.forward_features(x)
    m.reset_classifier(0)
    torch.testing.assert_close(m(x), pooled)
    m.reset_classifier(7)
    assert m(x).shape == (2, 7) and m(x).dtype == torch.float64  # new head follows the model's dtype
    with pytest.raises(UserError, match="num_classes must be >= 0"):
        m.reset_classifier(-1)


@pytest.mark.parametrize("name", [n for n in models.names() if n not in HEAVY])
def test_no_weight_decay_covers_norms_biases_and_embeddings(name):
    m = _make(name, 32)
    params = dict(m.named_parameters())
    nwd = m.no_weight_decay()
    assert nwd <= set(params)
    assert all(params[n].ndim <= 1 for n in nwd if not n.endswith(("pos_embed", "cls_token", "bias_table")))
    assert all(params[n].ndim >= 2 for n in set(params) - nwd)  # only matrices / kernels decay
    assert all(n in nwd for n in params if n.endswith(("pos_embed", "cls_token", "relative_position_bias_table")))


def test_no_weight_decay_names():
    m = _make("vit_tiny", 32)
    nwd = m.no_weight_decay()
    names = dict(m.named_parameters())
    assert {"pos_embed", "cls_token", "norm.weight", "norm.bias", "blocks.0.attn.qkv.bias"} <= nwd
    assert "blocks.0.attn.qkv.weight" not in nwd and "head.weight" not in nwd
    assert nwd <= set(names)
    # every matrix with decay is a weight of a Linear/Conv
    assert all(n.endswith("weight") for n in set(names) - nwd)


def test_vit_tiny_fashion_mnist_config():
    m = models.create("vit_tiny", img_size=28, num_classes=10, in_chans=1)
    assert m.patch_size == 4 and m.grid_shape == (7, 7, 96)
    assert len(m.blocks) == 6 and m.blocks[0].attn.num_heads == 3
    assert m.blocks[0].mlp.fc1.out_features == 192
    assert m(_images(2, 1, 28)).shape == (2, 10)


def test_param_count_vit():
    """SPEC lists 2.8M (paper A's table); the paper's own config (timm-style ViT, 10 classes) has 2.70M."""
    n = _params(models.create("vit", img_size=32, num_classes=10))
    print(f"vit params: {n} (SPEC 2.8M, {100 * (n / 2.8e6 - 1):+.1f}%)")
    # per block: qkv 192*576+576, proj 192*192+192, mlp 2*192*384+384+192, two norms 4*192
    block = 192 * 576 + 576 + 192 * 192 + 192 + 2 * 192 * 384 + 384 + 192 + 4 * 192
    expected = 9 * block + (3 * 16 * 192 + 192) + 65 * 192 + 192 + 2 * 192 + (192 * 10 + 10)
    assert n == expected


def test_unknown_name_lists_names():
    with pytest.raises(UserError, match="unknown model 'nope'; choose from: .*vit_tiny"):
        models.create("nope", img_size=32, num_classes=10)
    with pytest.raises(UserError, match="unknown model"):
        models.default_img_size("nope")


def test_bad_img_size_says_which_sizes_work():
    with pytest.raises(UserError, match=r"vit: img_size 30 does not work; sizes that work: multiples of 4"):
        models.create("vit", img_size=30, num_classes=10)


def test_unknown_override_is_user_error():
    with pytest.raises(UserError, match="unknown option.*depth"):
        models.create("vit", img_size=32, num_classes=10, dept=3)


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 3, 30, 32), (3, 32, 32)])
def test_bad_input_shape_names_expected_and_actual(shape):
    m = _make("vit_tiny", 32)
    actual = ", ".join(map(str, shape))
    with pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\).*got \(" + actual):
        m(torch.zeros(shape))


def test_default_img_size():
    assert models.default_img_size("vit") == 32


# ---------------------------------------------------------------- Swin


def _swin_attention_reference(block, x):
    """Window attention of `block` on x (B, H, W, C) in float64, without roll, padding or partition.

    Token i attends to token j iff both fall in the same window of the shifted partition (row band
    floor((r - s) / wh), column band likewise); the bias is the table entry of their displacement.
    """
    from fastvit.models.swin import window_geometry

    B, H, W, C = x.shape
    wh, ww, sh, sw = window_geometry(H, W, block.window, block.shifted)
    Wn = block.window
    r, c = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    r, c = r.flatten(), c.flatten()
    band = torch.div(r - sh, wh, rounding_mode="floor") * 10_000 + torch.div(c - sw, ww, rounding_mode="floor")
    same = band[:, None] == band[None, :]  # (HW, HW)
    dr = r[:, None] - r[None, :]
    dc = c[:, None] - c[None, :]
    table = block.relative_position_bias_table.double()
    idx = ((dr + Wn - 1) * (2 * Wn - 1) + (dc + Wn - 1)).clamp(0, table.shape[0] - 1)
    bias = table[idx].permute(2, 0, 1)  # (heads, HW, HW)
    bias = bias.masked_fill(~same, float("-inf"))
    attn = block.attn
    t = x.double().reshape(B, H * W, C)
    qkv = t @ attn.qkv.weight.double().T + attn.qkv.bias.double()
    q, k, v = qkv.reshape(B, H * W, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-1, -2) * attn.scale + bias, -1) @ v  # (B, heads, HW, d)
    out = a.transpose(1, 2).reshape(B, H * W, C) @ attn.proj.weight.double().T + attn.proj.bias.double()
    return out.reshape(B, H, W, C)


@pytest.mark.parametrize(
    "H,W,window,shifted",
    [
        (8, 8, 4, False),
        (8, 8, 4, True),  # shifted-window mask
        (12, 8, 4, True),  # non-square grid
        (10, 6, 4, True),  # padding and shift together
        (7, 7, 7, True),  # window == grid: no shift
        (2, 2, 4, True),  # window clamped to a grid smaller than it (local crops)
        (14, 14, 7, True),  # odd window (Swin-T)
    ],
)
@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("native", [True, False], ids=["native-grid", "other-grid"])
def test_swin_window_attention_matches_float64_reference(H, W, window, shifted, backend, native, monkeypatch):
    """Both the buffers built for the native grid and the per-call index/mask of other grids."""
    from fastvit.models.swin import SwinBlock

    monkeypatch.setenv("FASTVIT_ATTN", backend)
    torch.manual_seed(0)
    grid = (H, W) if native else (H + 4, W + 4)
    block = SwinBlock(16, 2, window, shifted, mlp_ratio=2.0, drop_path=0.0, grid=grid)
    with torch.no_grad():  # a table with structure, so a wrong index shows
        block.relative_position_bias_table.normal_()
    x = torch.randn(2, H, W, 16, generator=torch.Generator().manual_seed(1))
    if backend == "math":  # the math backend runs in the input dtype: check it in float64
        block.double()
        x = x.double()
    out = block._windows(x)
    ref = _swin_attention_reference(block, x)
    tol = 1e-10 if backend == "math" else 1e-5
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


def test_swin_bias_gradient_reaches_the_table():
    """The rel-pos table gets its gradient through the attention bias (the fused kernel's job)."""
    m = _make("swin_tiny", 32)
    m(_images(2, 3, 32)).sum().backward()
    for stage in m.stages:
        for block in stage.blocks:
            g = block.relative_position_bias_table.grad
            assert g is not None and g.abs().sum() > 0


def test_swin_windowed_bias_layout():
    """The bias handed to the attention is (nW, heads, N, N), not expanded over the batch."""
    import fastvit.models.swin as swin_mod

    seen = []
    real = swin_mod.Attention.forward

    def spy(self, x, bias=None):
        seen.append((x.shape[0], None if bias is None else tuple(bias.shape)))
        return real(self, x, bias)

    m = _make("swin_tiny", 32).eval()
    swin_mod.Attention.forward = spy
    try:
        m(_images(3, 3, 32))
    finally:
        swin_mod.Attention.forward = real
    # stage 1: 16x16 grid, window 4 -> 16 windows; unshifted blocks need only the rel-pos bias
    assert seen[0] == (3 * 16, (1, 1, 16, 16))
    assert seen[1] == (3 * 16, (16, 1, 16, 16))
    # stage 3: 4x4 grid == window: one window, no shift, no mask
    assert seen[-1] == (3, (1, 4, 16, 16))


def test_swin_stages_and_grid():
    m = _make("swin", 32)
    x = _images(2, 3, 32)
    stages = m.forward_stages(x)
    assert [tuple(s.shape) for s in stages] == [(2, 8, 8, 192), (2, 4, 4, 384), (2, 4, 4, 384)]
    assert m.grid_dims == [192, 384, 384]
    pooled, grid = m.forward_features(x)
    torch.testing.assert_close(grid, stages[-1])  # last stage, before the final norm
    torch.testing.assert_close(pooled, m.norm(grid).mean((1, 2)))
    # half-size local crops: 8x8 patch grid; the last stages' windows clamp to 4x4 / 2x2
    assert m.forward_features(_images(2, 3, 16))[1].shape == (2, 2, 2, 384)


def test_swin_last_attention_is_window_attention():
    m = _make("swin_tiny", 32).eval()
    a = m.last_attention(_images(2, 3, 32))
    assert a.shape == (2, 4, 16, 16)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 16))


def test_swin_bad_sizes():
    with pytest.raises(UserError, match=r"swin: img_size 36 does not work; sizes that work: multiples of 8"):
        models.create("swin", img_size=36, num_classes=10)
    with pytest.raises(UserError, match=r"swin_t: img_size 200 does not work; sizes that work: multiples of 32"):
        models.create("swin_t", img_size=200, num_classes=10)
    m = _make("swin_tiny", 32)
    with pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\) with H and W multiples of 8, got"):
        m(torch.zeros(1, 3, 20, 20))


# ---------------------------------------------------------------- CaiT


def test_cait_talking_heads_matches_float64_reference():
    from fastvit.models.cait import TalkingHeadAttention

    torch.manual_seed(0)
    attn = TalkingHeadAttention(16, 4).double()
    x = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    B, N, C = x.shape
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).reshape(B, N, 3, 4, 4).permute(2, 0, 3, 1, 4)
    s = torch.einsum("bhnd,bhmd->bhnm", q, k) / 2.0
    s = torch.einsum("gh,bhnm->bgnm", attn.proj_l.weight, s) + attn.proj_l.bias.view(1, 4, 1, 1)
    p = torch.einsum("gh,bhnm->bgnm", attn.proj_w.weight, s.softmax(-1)) + attn.proj_w.bias.view(1, 4, 1, 1)
    ref = (p @ v).transpose(1, 2).reshape(B, N, C) @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(attn(x), ref, rtol=1e-10, atol=1e-10)


def test_cait_class_attention_updates_only_cls():
    m = _make("cait_tiny", 32).eval()
    x = _images(2, 3, 32)
    pooled, grid = m.forward_features(x)
    # the grid comes from the self-attention blocks alone: dropping the class blocks leaves it unchanged
    t, _, _ = m._patch_tokens(x)
    for block in m.blocks:
        t = block(t)
    torch.testing.assert_close(grid, m.norm(t).reshape(2, 8, 8, -1))
    a = m.last_attention(x)
    assert a.shape == (2, 4, 1, 65)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 1))


def test_cait_local_crops_use_first_position_embeddings():
    m = _make("cait_tiny", 32).eval()
    x = _images(2, 3, 16)
    t, Hg, Wg = m._patch_tokens(x)
    assert (Hg, Wg) == (4, 4)
    torch.testing.assert_close(t, m.patch_embed(x).flatten(1, 2) + m.pos_embed[:, :16])
    with pytest.raises(ValueError, match=r"cait_tiny: input \(2, 3, 64, 64\) gives 16x16 patches"):
        m(_images(2, 3, 64))


def test_cait_layerscale_init_and_uniform_drop_path():
    m = models.create("cait", img_size=32, num_classes=10, drop_path=0.1)
    assert torch.all(m.blocks[0].ls1.gamma == 1e-5)
    assert {b.drop_path.p for b in m.blocks} == {0.1}
    assert len(m.class_blocks) == 2 and m.class_blocks[0].mlp.fc1.out_features == 4 * 192


# ---------------------------------------------------------------- attention backends

TINY = ["vit_tiny", "swin_tiny", "cait_tiny", "cvt_tiny", "t2t_vit_tiny"]  # the archs with attention


def _outputs_and_grads(m, x, backend, monkeypatch):
    monkeypatch.setenv("FASTVIT_ATTN", backend)
    m.zero_grad(set_to_none=True)
    pooled, grid = m.forward_features(x)
    logits = m.forward_head(pooled)
    (logits.square().mean() + grid.square().mean()).backward()
    return logits.detach(), grid.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
@pytest.mark.parametrize("name", TINY)
def test_attention_backends_agree(name, backend, monkeypatch):
    """Every model gives the same outputs and gradients with each backend as with `math` (fp32)."""
    from fastvit.kernels.attention import BACKENDS

    if backend not in BACKENDS:
        pytest.skip(f"attention backend {backend!r} is not available in fastvit.kernels yet")
    m = _make(name, 32).eval()  # eval: BatchNorm (CvT) uses running stats, so calls are repeatable
    x = _images(2, 3, 32)
    ref = _outputs_and_grads(m, x, "math", monkeypatch)
    got = _outputs_and_grads(m, x, backend, monkeypatch)
    # Normwise per tensor, floored at the model's largest gradient norm: an element-wise rtol fails on
    # whichever entry cancels on a given CPU's BLAS; the attention rounding (fp32) is ~1e-6 of the norms.
    floor = 1e-3 * max(g.norm() for g in ref[2].values())
    for name_, a, b in (("logits", got[0], ref[0]), ("grid", got[1], ref[1]),
                        *((n, got[2][n], g) for n, g in ref[2].items())):
        scale = b.norm() + (floor if name_ not in ("logits", "grid") else 0)
        assert (a - b).norm() <= 1e-4 * scale, (name_, (a - b).norm().item(), scale.item())


# ---------------------------------------------------------------- parameter counts (SPEC §1)

SPEC_PARAMS = [
    ("vit", 32, 10, 2.8e6),
    ("swin", 32, 10, 7.1e6),
    ("cait", 32, 10, 7.7e6),
    ("swin_t", 224, 1000, 28.3e6),
    ("cvt_13", 224, 1000, 20.0e6),
    ("t2t_vit_14", 224, 1000, 21.5e6),
]
# vit and cait follow the configs SPEC (and paper A's code) spell out; those give 2.70M and 8.05M, not
# the 2.8M / 7.7M of paper A's table. The exact counts are pinned by closed forms below.
KNOWN_GAP = {"vit": "config gives 2.70M (-3.7%)", "cait": "config gives 8.05M (+4.6%)"}


def _meta_params(name, img_size, num_classes):
    with torch.device("meta"):  # shapes only: no memory, no init time
        return _params(models.create(name, img_size=img_size, num_classes=num_classes))


@pytest.mark.parametrize(
    "name,img_size,num_classes,spec",
    [
        pytest.param(*p, marks=pytest.mark.xfail(strict=True, reason=KNOWN_GAP[p[0]]))
        if p[0] in KNOWN_GAP
        else p
        for p in SPEC_PARAMS
    ],
)
def test_param_counts_within_2_percent_of_spec(name, img_size, num_classes, spec):
    n = _meta_params(name, img_size, num_classes)
    print(f"{name} @ {img_size}px, {num_classes} classes: {n:,} params (SPEC {spec / 1e6:.1f}M, "
          f"{100 * (n / spec - 1):+.1f}%)")
    assert abs(n / spec - 1) <= 0.02


def test_param_count_resnet50_matches_the_canonical_network():
    assert _meta_params("resnet50", 224, 1000) == 25_557_032  # torchvision's / the paper's ResNet-50


def test_param_count_cait_closed_form():
    n = _meta_params("cait", 32, 10)
    D, hid, cls_hid = 192, 384, 768
    attn = D * 3 * D + 3 * D + D * D + D + 2 * (4 * 4 + 4)  # qkv, proj, talking-heads proj_l / proj_w
    block = attn + 2 * D * hid + hid + D + 4 * D + 2 * D  # + mlp, two norms, two LayerScales
    class_block = 3 * (D * D + D) + D * D + D + 2 * D * cls_hid + cls_hid + D + 4 * D + 2 * D
    embed = 3 * 16 * D + D + 64 * D + D  # patch conv, pos embed (patches only), cls token
    assert n == 24 * block + 2 * class_block + embed + 2 * D + (D * 10 + 10)


# ---------------------------------------------------------------- README table helpers


def test_summary_counts_flops_and_tokens_of_vit_tiny():
    from fastvit.models.summary import describe

    d = describe("vit_tiny", 32)
    N, D, hid, heads, hd = 65, 96, 192, 3, 32
    block = N * D * 3 * D + 2 * heads * N * N * hd + N * D * D + 2 * N * D * hid  # multiply-adds
    macs = 64 * (3 * 16) * D + 6 * block + D * 10
    assert d["gflops"] * 1e9 == 2 * macs
    assert d["tokens"] == [64] and d["params"] == _params(_make("vit_tiny", 32))


def test_summary_tokens_per_stage_swin_and_t2t():
    from fastvit.models.summary import tokens_per_stage

    assert tokens_per_stage(_make("swin_tiny", 32), 32) == [256, 64, 16]
    assert tokens_per_stage(_make("t2t_vit_tiny", 64), 64) == [256, 64, 16]
    assert tokens_per_stage(_make("cvt_tiny", 64), 64) == [256, 64, 16]
    assert tokens_per_stage(_make("resnet_tiny", 64), 64) == [256, 64, 16, 4]


# ---------------------------------------------------------------- T2T / CvT


def test_t2t_token_performer_matches_float64_formula():
    """y = v + proj(sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j)), phi(x) = exp(Wx - |x|^2/2)/sqrt(m)."""
    from fastvit.models.t2t import TokenPerformer

    torch.manual_seed(0)
    tp = TokenPerformer(dim=12, emb=8).double()
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    k, q, v = tp.kqv(tp.norm1(x)).split(8, dim=-1)

    def phi(t):
        return torch.exp(t @ tp.w.T - (t * t).sum(-1, keepdim=True) / 2) / 2.0  # m = 4

    kern = torch.einsum("bim,bjm->bij", phi(q), phi(k))  # (B, T, T)
    att = torch.einsum("bij,bjd->bid", kern, v) / (kern.sum(-1, keepdim=True) + 1e-8)  # eps as T2T
    y = v + tp.proj(att)
    torch.testing.assert_close(tp(x), y + tp.mlp(tp.norm2(y)), rtol=1e-9, atol=1e-9)
    assert "w" in tp.state_dict() and all(n != "w" for n, _ in tp.named_parameters())  # fixed, saved


def test_cvt_keys_are_strided_and_grid_is_pooled():
    m = _make("cvt_tiny", 64).eval()
    seen = []
    attn = m.stages[0].blocks[0].attn
    hook = attn.k.register_forward_hook(lambda mod, i, o: seen.append(o.shape))
    pooled, grid = m.forward_features(_images(2, 3, 64))
    hook.remove()
    assert seen == [(2, 64, 16)]  # 16x16 queries, 8x8 keys (stride 2)
    last = m.stages[-1](m.stages[1](m.stages[0](_images(2, 3, 64)).permute(0, 3, 1, 2)).permute(0, 3, 1, 2))
    assert last.shape == (2, 4, 4, 64) and grid.shape == (2, 2, 2, 64)
    ref = torch.nn.functional.avg_pool2d(last.permute(0, 3, 1, 2), 3, 2, 1, count_include_pad=False)
    torch.testing.assert_close(grid, ref.permute(0, 2, 3, 1))
    torch.testing.assert_close(pooled, m.norm(last).mean((1, 2)))


@pytest.mark.parametrize("H,W,shifted", [(8, 8, True), (10, 6, True), (8, 8, False)])
def test_swin_triton_backend_output_and_table_gradient(H, W, shifted, monkeypatch):
    """The fused kernel receives the summed (nW, heads, N, N) bias and returns its gradient."""
    from fastvit.kernels.attention import BACKENDS
    from fastvit.models.swin import SwinBlock

    if "triton" not in BACKENDS:
        pytest.skip("attention backend 'triton' is not available in fastvit.kernels yet")
    torch.manual_seed(0)
    block = SwinBlock(32, 2, 4, shifted, mlp_ratio=2.0, drop_path=0.0, grid=(H, W))
    with torch.no_grad():
        block.relative_position_bias_table.normal_()
    x = torch.randn(2, H, W, 32, generator=torch.Generator().manual_seed(1))
    results = {}
    for backend in ("math", "triton"):
        monkeypatch.setenv("FASTVIT_ATTN", backend)
        block.zero_grad(set_to_none=True)
        out = block._windows(x)
        out.square().sum().backward()
        results[backend] = (out.detach(), block.relative_position_bias_table.grad.clone())
    torch.testing.assert_close(results["triton"][0], results["math"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results["triton"][1], results["math"][1], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["vit", "swin", "cait"])
def test_init_follows_the_papers(name):
    """Linear weights N(0, 0.02) (timm's trunc_normal_, bounds +-2), zero biases, LayerNorm (1, 0)."""
    m = _make(name, 32)
    weights = torch.cat([mod.weight.flatten() for mod in m.modules() if isinstance(mod, torch.nn.Linear)
                         and mod.out_features > 16])  # (talking-heads 4x4 mixers excluded: too few)
    assert abs(weights.std().item() - 0.02) < 0.0005 and abs(weights.mean().item()) < 0.0005
    for mod in m.modules():
        if isinstance(mod, torch.nn.Linear) and mod.bias is not None:
            assert torch.all(mod.bias == 0)
        if isinstance(mod, torch.nn.LayerNorm):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)
