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
    """Write to a temp file in the same folder, fsync, rename: a crash never leaves a half file.
    A failed write (disk full, no permission) is a UserError; the previous file at `path` is kept."""
    path = Path(path)
    state = {**state, DIGEST_KEY: digest(state)}
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        os_error = write_failure(e)
        if os_error is not None:
            raise UserError(f"cannot write checkpoint {path}: {os_error}") from e
        raise


def write_failure(e: BaseException) -> str | None:
    """The OSError behind a failed write, as text: torch's zip writer may replace it with a RuntimeError
    (its end-of-file record after the failed write), so the exception chain is searched too."""
    while e is not None:
        if isinstance(e, OSError):
            return e.strerror or str(e)
        if isinstance(e, RuntimeError) and "write" in str(e):  # "... file write failed"
            return str(e).strip().splitlines()[0]
        e = e.__cause__ or e.__context__
    return None


def write_text_atomic(path: str | Path, text: str) -> None:
    """A run dir's small text files (config.json, metrics.jsonl rewrites): all of it or the old file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; these are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files of writes that a kill interrupted (`.NAME.*.tmp`); returns them."""
    stale = sorted(Path(folder).glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def nonfinite_tensors(state: dict) -> list[str]:
    """Names (dotted paths) of the floating-point tensors in `state` holding NaN or Inf.
    One device->host read for the whole state: a checkpoint save is a sync point anyway."""
    named = []

    def walk(prefix: str, obj) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        elif isinstance(obj, list | tuple):
            for i, value in enumerate(obj):
                walk(f"{prefix}.{i}", value)
        elif isinstance(obj, torch.Tensor) and obj.is_floating_point() and obj.numel():
            named.append((prefix, obj))

    walk("", state)
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all().to(named[0][1].device) for _, t in named]).cpu()
    return [name for (name, _), ok in zip(named, finite.tolist(), strict=True) if not ok]


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
