"""tests/host_syncs.py counts every kind of host sync it names, once per call, and nothing else."""

import operator
import threading

import pytest
import torch

from tests.host_syncs import count_host_syncs


def _t():
    return torch.tensor([3.0, 0.0, 2.0, 3.0])


SYNCS = {
    "item": ("item", lambda t: t[0].item()),
    "tolist": ("tolist", lambda t: t.tolist()),
    "numpy": ("numpy", lambda t: t.numpy()),
    "bool": ("__bool__", lambda t: bool(t[0] > 1)),
    "if": ("__bool__", lambda t: 1 if (t > 1).any() else 0),
    "int": ("__int__", lambda t: int(t[0])),
    "float": ("__float__", lambda t: float(t.sum())),
    "index": ("__index__", lambda t: [0, 1, 2, 3][operator.index(t[0].long())]),
    "local_scalar_dense": ("_local_scalar_dense", lambda t: torch.ops.aten._local_scalar_dense(t[0])),
    "nonzero": ("nonzero", lambda t: torch.nonzero(t)),
    "where-1-arg": ("nonzero", lambda t: torch.where(t > 1)),
    "masked_select": ("masked_select", lambda t: torch.masked_select(t, t > 1)),
    "mask-index": ("boolean-mask index", lambda t: t[t > 1]),
    "mask-assign": ("boolean-mask index", lambda t: t.clone().__setitem__(t > 1, 0.0)),
    "unique": ("unique", lambda t: torch.unique(t)),
    "unique-dim": ("unique", lambda t: torch.unique(t.view(2, 2), dim=0)),
    "unique_consecutive": ("unique", lambda t: torch.unique_consecutive(t)),
    "bincount": ("bincount", lambda t: torch.bincount(t.long())),
    "repeat_interleave": ("repeat_interleave", lambda t: torch.repeat_interleave(t, t.long())),
}


@pytest.mark.parametrize("case", list(SYNCS))
def test_each_kind_counts_once(case):
    name, fn = SYNCS[case]
    t = _t()
    with count_host_syncs() as c:
        fn(t)
    assert c.by_name == {name: 1} and c.total == 1, c.by_name


def test_fixed_shape_device_work_counts_nothing():
    t = _t()
    x = torch.rand(4, 3, 8, 8)
    with count_host_syncs() as c:
        m = t > 1
        y = torch.where(m.view(4, 1, 1, 1), x.flip(0), x).masked_fill(x > 0.5, 0.0)
        y = y.index_select(0, torch.argsort(t)) + y[torch.tensor([1, 0, 3, 2])]
        torch.zeros(10).scatter_add_(0, t.long(), t)
        t.max(), t.argmax(), t.sum(), torch.repeat_interleave(t, 2), torch.repeat_interleave(t, t.long(),
                                                                                             output_size=8)
        x.float().mean((2, 3)).cumsum(1)
    assert c.total == 0, c.by_name


def test_counts_accumulate_and_methods_are_restored():
    t = _t()
    originals = {n: getattr(torch.Tensor, n) for n in ("item", "tolist", "__bool__")}
    with count_host_syncs() as c:
        for _ in range(3):
            t[1].item()
        torch.nonzero(t)
        t.tolist()
    assert c.by_name == {"item": 3, "nonzero": 1, "tolist": 1} and c.total == 5
    assert {n: getattr(torch.Tensor, n) for n in originals} == originals
    with count_host_syncs() as again:
        pass
    assert again.total == 0
    t.item  # noqa: B018 -- outside the block nothing is counted any more
    assert c.total == 5


def test_other_threads_are_not_counted():
    t = _t()
    with count_host_syncs() as c:
        worker = threading.Thread(target=lambda: (t[0].item(), t.tolist(), torch.nonzero(t)))
        worker.start()
        worker.join()
        t[0].item()
    assert c.by_name == {"item": 1}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a copy to the host needs a device tensor")
def test_copy_from_the_device_counts():
    t = _t().cuda()
    with count_host_syncs() as c:
        t.cpu()
        t.to("cpu", non_blocking=False)
        t + 1
    assert c.by_name == {"copy to host": 2}
