"""Checkpoints: atomic writes, corruption detection, no code execution on load."""

import os

import pytest
import torch

from fastvit import checkpoint
from fastvit.errors import UserError


def state():
    g = torch.Generator().manual_seed(0)
    return {"model": {"w": torch.randn(64, 32, generator=g), "b": torch.zeros(32, dtype=torch.bfloat16)},
            "step": 7, "rng": torch.get_rng_state(), "config": {"arch": "vit", "lr": 1e-3}, "none": None}


def test_round_trip_is_exact_and_plain_torch_can_read_it(tmp_path):
    s = state()
    checkpoint.save(s, tmp_path / "c.pt")
    back = checkpoint.load(tmp_path / "c.pt")
    assert torch.equal(back["model"]["w"], s["model"]["w"]) and torch.equal(back["rng"], s["rng"])
    assert back["model"]["b"].dtype == torch.bfloat16 and back["step"] == 7 and back["config"] == s["config"]
    plain = torch.load(tmp_path / "c.pt", weights_only=True)
    assert torch.equal(plain["model"]["w"], s["model"]["w"])


def test_flipped_byte_in_tensor_data_is_detected(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save(state(), path)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 3] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="corrupt"):
        checkpoint.load(path)


def test_truncated_file_is_detected(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save(state(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="corrupt or not a fastvit checkpoint"):
        checkpoint.load(path)


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned-marker",))


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({"model": Exploit()}, f)
    with pytest.raises(UserError, match="corrupt or not a fastvit checkpoint"):
        checkpoint.load(path)
    assert not (tmp_path / "pwned-marker").exists()


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save(state(), path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({**state(), "step": 8}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.pt")
