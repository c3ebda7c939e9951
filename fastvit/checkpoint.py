"""Checkpoints: atomic save, integrity-checked safe load.

A checkpoint is an ordinary `torch.save` dict, loadable with `torch.load(weights_only=True)`, plus a
`sha256` entry over its content: zip CRCs do not cover tensor bytes as torch reads them (a flipped
byte in a weight loads silently), so the digest is what detects a corrupted file.
"""

import hashlib
import os
import tempfile
from pathlib import Path

import torch

from fastvit.errors import UserError

DIGEST_KEY = "sha256"


def _update(h, obj) -> None:
    """Feed a canonical walk of obj (dicts by sorted key, tensors by bytes) into the hash."""
    if isinstance(obj, dict):
        h.update(b"{")
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _update(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, list | tuple):
        h.update(b"[")
        for item in obj:
            _update(h, item)
        h.update(b"]")
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    else:
        h.update(repr(obj).encode())


def digest(state: dict) -> str:
    h = hashlib.sha256()
    _update(h, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return h.hexdigest()


def save(state: dict, path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, rename: a crash never leaves a half file."""
    path = Path(path)
    state = {**state, DIGEST_KEY: digest(state)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load(path: str | Path) -> dict:
    """Load a fastvit checkpoint on the CPU; no code from the file is ever executed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, wrong format, disallowed pickle content
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} is corrupt or not a fastvit checkpoint ({first[:120]})") from e
    if not isinstance(state, dict) or DIGEST_KEY not in state:
        raise UserError(f"checkpoint {path} is not a fastvit checkpoint (no {DIGEST_KEY} entry)")
    if digest(state) != state[DIGEST_KEY]:
        raise UserError(f"checkpoint {path} is corrupt: its content does not match its sha256")
    return state
