"""Paper A's released SSL checkpoints (train_ssl.py format) load into fastvit's vit, swin and cait.

The checkpoints are written here in paper A's key names, buffers and shapes, by an inverse mapping written
apart from the loader's (fastvit -> paper A), the CaiT patch embedding checked against paper A's own op
(einops Rearrange 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)' then Linear).
"""

import argparse
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from fastvit import checkpoint, models, pretrained
from fastvit.errors import UserError

OUT_DIM = 64


def run_cli(*args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fastvit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def data_args(fmnist_dir, cache_dir):
    return ["--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--cache-dir", cache_dir]


def source_model(arch: str, in_chans: int = 3, **overrides):
    """A backbone with every tensor random (LayerScale, norms and tables too), so a mix-up shows in features."""
    torch.manual_seed(0)
    model = models.create(arch, img_size=32, num_classes=0, in_chans=in_chans, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def paper_a_relative_position_index(window: int) -> torch.Tensor:
    """Paper A's WindowAttention buffer: (dh + w - 1) * (2w - 1) + (dw + w - 1) for every token pair."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # (N, N, 2)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def to_paper_a(arch_family: str, sd: dict, merge_at_next_layer: bool = False) -> dict:
    """fastvit backbone names -> paper A's backbone names (the inverse of what the loader must do)."""
    out = {}
    for key, value in sd.items():
        if arch_family == "swin":
            if m := re.fullmatch(r"stages\.(\d+)\.downsample\.(.*)", key):
                key = f"layers.{int(m[1]) + merge_at_next_layer}.downsample.{m[2]}"
            elif m := re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.relative_position_bias_table", key):
                key = f"layers.{m[1]}.blocks.{m[2]}.attn.relative_position_bias_table"
                window = int(round(((value.shape[0] ** 0.5) + 1) / 2))
                out[f"layers.{m[1]}.blocks.{m[2]}.attn.relative_position_index"] = paper_a_relative_position_index(
                    window)
            else:
                key = key.replace("stages.", "layers.")
        elif arch_family == "cait":
            key = key.replace("class_blocks.", "blocks_token_only.").replace(".ls1.gamma", ".gamma_1").replace(
                ".ls2.gamma", ".gamma_2")
            if key == "patch_embed.proj.weight":  # Conv2d [D, C, p, p] -> Linear [D, (p1 p2 c)]
                key, value = "patch_embed.1.weight", value.permute(0, 2, 3, 1).reshape(value.shape[0], -1)
            elif key == "patch_embed.proj.bias":
                key = "patch_embed.1.bias"
        out[key] = value.clone()
    return out


def paper_a_checkpoint(path, arch: str, backbone: dict, student_backbone: dict) -> None:
    """What paper A's train_ssl.py saves: teacher (MultiCropWrapper: backbone + head), DDP student, etc."""
    head = {"head.mlp.0.weight": torch.randn(512, 192), "head.mlp.0.bias": torch.zeros(512),
            "head.last_layer.weight_g": torch.ones(OUT_DIM, 1), "head.last_layer.weight_v": torch.randn(OUT_DIM, 256)}
    torch.save({
        "student": {**{f"module.backbone.{k}": v for k, v in student_backbone.items()},
                    **{f"module.{k}": v for k, v in head.items()}},
        "teacher": {**{f"backbone.{k}": v for k, v in backbone.items()}, **head},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 0.04, "params": [0, 1]}]},
        "epoch": 200,
        "args": argparse.Namespace(arch=arch, image_size=32, dataset="CIFAR10", patch_size=4, out_dim=OUT_DIM),
        "view_pred_loss": {"center": torch.zeros(1, OUT_DIM)},
    }, path)


CASES = [("vit_tiny", "vit", {}, False), ("swin_tiny", "swin", {}, False), ("swin_tiny", "swin", {}, True),
         ("cait", "cait", {"depth": 2}, False)]


@pytest.mark.parametrize("arch,family,overrides,merge_next", CASES,
                         ids=["vit", "swin", "swin-merge-at-next-layer", "cait"])
def test_paper_a_checkpoint_gives_the_source_features(tmp_path, arch, family, overrides, merge_next):
    source = source_model(arch, **overrides)
    student = source_model(arch, **overrides)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)  # the student differs: the teacher must be the one loaded
    path = tmp_path / "checkpoint.pth"
    paper_a_checkpoint(path, family, to_paper_a(family, source.state_dict(), merge_next),
                       to_paper_a(family, student.state_dict(), merge_next))

    target = models.create(arch, img_size=32, num_classes=10, **overrides)
    init = pretrained.match_backbone(target, path)
    lines = []
    init.load_into(target, lines.append)
    assert "paper A train_ssl.py teacher" in lines[0]
    assert [line for line in lines[1:] if "head." not in line] == []  # only the fresh classifier is new
    assert len(init.loaded) == len(source.state_dict())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want, got = source.forward_features(x)[0], target.eval().forward_features(x)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_the_inverse_cait_patch_embedding_is_paper_a_s_rearrange_and_linear():
    source = source_model("cait", depth=1)
    sd = to_paper_a("cait", source.state_dict())
    x = torch.randn(2, 3, 32, 32)
    p = source.patch_size
    B, C, H, W = x.shape
    patches = x.view(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, -1, p * p * C)  # (p1 p2 c)
    theirs = patches @ sd["patch_embed.1.weight"].T + sd["patch_embed.1.bias"]
    with torch.no_grad():
        ours = source.patch_embed(x).flatten(1, 2)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_paper_a_swin_index_buffer_is_the_one_fastvit_computes():
    from fastvit.models.swin import relative_index

    assert torch.equal(paper_a_relative_position_index(4), relative_index(4, 4, 4))


def test_nothing_matching_is_refused(tmp_path):
    swin = source_model("swin_tiny")
    path = tmp_path / "swin.pth"
    paper_a_checkpoint(path, "swin", to_paper_a("swin", swin.state_dict()), to_paper_a("swin", swin.state_dict()))
    with pytest.raises(UserError, match="none of its .* backbone tensors matches vit_tiny"):
        pretrained.match_backbone(models.create("vit_tiny", img_size=32, num_classes=10), path)


def test_unknown_format_is_refused(tmp_path):
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "x.pth")
    with pytest.raises(UserError, match="neither a fastvit pretrain checkpoint nor paper A"):
        pretrained.match_backbone(models.create("vit_tiny", img_size=32, num_classes=10), tmp_path / "x.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="corrupt or of an unknown format"):
        pretrained.match_backbone(models.create("vit_tiny", img_size=32, num_classes=10), tmp_path / "bad.pth")


def test_finetune_init_and_eval_knn_take_a_paper_a_checkpoint(data_args, tmp_path):
    source = source_model("vit_tiny", in_chans=1)  # Fashion-MNIST is grey
    ckpt = tmp_path / "checkpoint.pth"
    paper_a_checkpoint(ckpt, "vit_tiny", to_paper_a("vit", source.state_dict()),
                       to_paper_a("vit", source.state_dict()))
    ft = tmp_path / "ft"
    r = run_cli("finetune", "--init", ckpt, "--arch", "vit_tiny", *data_args, "--epochs", "1", "--subset", "64",
                "--batch-size", "32", "--out", ft, "--lr", "1e-12", "--warmup-epochs", "0", "--weight-decay", "0",
                "--drop-path", "0", "--min-lr", "0", "--warmup-lr", "0")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "paper A train_ssl.py teacher" in out and f"loaded {len(source.state_dict())}/" in out
    tuned = checkpoint.load(ft / "last.pt")["model"]
    for name, value in source.state_dict().items():  # lr ~ 0: every backbone tensor is still the teacher's
        torch.testing.assert_close(tuned[name], value, rtol=0, atol=1e-6, msg=name)

    r = run_cli("eval", "--knn", "--ckpt", ckpt, *data_args, "--knn-bank", "128", "--knn-test", "64")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert (result["bank"], result["images"]) == (128, 64) and 0 <= result["knn_acc1"] <= 100


@pytest.mark.parametrize("arch,eps", [("swin", 1e-6), ("swin_tiny", 1e-6), ("swin_t", 1e-5), ("swin_t_p2_w4", 1e-5)])
def test_swin_layer_norm_eps_is_its_paper_s(arch, eps):
    """Paper A's SwinTransformer defaults norm_layer to LayerNorm(eps=1e-6) (patch embed, blocks, merges, final);
    paper B's Swin-T uses torch's 1e-5: a loaded paper A checkpoint gives its features only with its eps."""
    with torch.device("meta"):
        model = models.create(arch, img_size=models.default_img_size(arch), num_classes=0)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and {m.eps for m in norms} == {eps}
