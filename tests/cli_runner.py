"""Run the fastvit CLI in this process (no per-call torch import) and capture what it prints."""

import contextlib
import io
import json
from types import SimpleNamespace

import pytest

from fastvit.cli import main


def fastvit(*args):
    """returncode / stdout / stderr of `fastvit ARGS`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def printed(*args) -> dict:
    """The CLI's --print-config JSON."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main([*args, "--print-config"])
    assert exit_.value.code == 0
    return json.loads(out.getvalue())
