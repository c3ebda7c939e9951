"""k-NN monitor: the chunked, sync-free vote against a float64 brute force; a pretrain logs it every epoch."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from fastvit.knn import label_ranks


def reference_ranks(bank, bank_labels, queries, query_labels, num_classes, k, temperature) -> list[int]:
    """DINO's eval_knn written plainly in float64: neighbours sorted by (similarity desc, index asc), votes
    exp(sim / T) per class, classes sorted by (votes desc, class asc); the rank of the true class."""
    bank, queries = bank.double().tolist(), queries.double().tolist()
    ranks = []
    for q, y in zip(queries, query_labels.tolist(), strict=True):
        sims = [sum(a * b for a, b in zip(q, row, strict=True)) for row in bank]
        order = sorted(range(len(bank)), key=lambda i: (-sims[i], i))[:k]
        votes = [0.0] * num_classes
        for i in order:
            votes[bank_labels[i]] += math.exp(sims[i] / temperature)
        ranks.append(sorted(range(num_classes), key=lambda c: (-votes[c], c)).index(y))
    return ranks


def features_with_ties(n_bank=60, n_query=25, dim=8, num_classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    bank = F.normalize(torch.randn(n_bank, dim, generator=g, dtype=torch.float64), dim=1)
    bank_labels = torch.randint(num_classes, (n_bank,), generator=g)
    queries = F.normalize(torch.randn(n_query, dim, generator=g, dtype=torch.float64), dim=1)
    # ties: bank rows repeated with other labels, and queries equal to bank rows (similarity 1, tied pairs)
    bank[40:50] = bank[0:10]
    bank_labels[40:50] = (bank_labels[0:10] + 1) % num_classes
    queries[:5] = bank[[0, 3, 5, 40, 7]]
    query_labels = torch.randint(num_classes, (n_query,), generator=g)
    return bank, bank_labels, queries, query_labels, num_classes


@pytest.mark.parametrize("k,chunk", [(20, 256), (20, 7), (3, 4), (1, 1), (100, 8)])
def test_ranks_equal_the_float64_brute_force(k, chunk):
    bank, bank_labels, queries, query_labels, num_classes = features_with_ties()
    ranks = label_ranks(bank, bank_labels, queries, query_labels, num_classes, k=k, temperature=0.07, chunk=chunk)
    assert ranks.tolist() == reference_ranks(bank, bank_labels, queries, query_labels, num_classes, min(k, 60), 0.07)


def test_a_tie_at_the_kth_place_takes_the_lower_index():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)  # rows 1 and 2 tie
    query = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 2])
    # k = 1: row 1 (label 1) beats row 2 (label 2); class 2 gets no vote and ranks after class 0 (equal, lower)
    assert label_ranks(bank, labels, query, torch.tensor([1]), 3, k=1).tolist() == [0]
    assert label_ranks(bank, labels, query, torch.tensor([2]), 3, k=1).tolist() == [2]
    assert label_ranks(bank, labels, query, torch.tensor([0]), 3, k=1).tolist() == [1]


def test_float32_features_agree_with_float64_on_well_separated_data():
    bank, bank_labels, queries, query_labels, num_classes = features_with_ties(n_bank=200, n_query=50, seed=1)
    # without the deliberate ties the smallest gaps (k-th vs (k+1)-th similarity 3.5e-4, votes 0.5% relative)
    # are far above float32 rounding on any CPU's summation order
    bank, queries = bank[:40], queries[5:]
    bank_labels = bank_labels[:40]
    query_labels = query_labels[5:]
    ranks32 = label_ranks(bank.float(), bank_labels, queries.float(), query_labels, num_classes)
    assert ranks32.tolist() == reference_ranks(bank, bank_labels, queries, query_labels, num_classes, 20, 0.07)


def test_a_two_epoch_pretrain_logs_knn_accuracy_every_epoch(fmnist_dir, cache_dir, tmp_path):
    out = tmp_path / "pre"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["pretrain", "--arch", "vit_tiny", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--cache-dir",
            cache_dir, "--epochs", "2", "--steps-per-epoch", "2", "--subset", "128", "--batch-size", "32", "--n-local",
            "2", "--dino-out-dim", "64", "--knn-bank", "256", "--knn-test", "128", "--out", out,
            # paper A's loop options ride along: per-tensor clip, teacher drop path, its wd groups, a longer schedule
            "--grad-clip", "3", "--clip-mode", "per-tensor", "--teacher-drop-path", "--wd-exclude", "1d",
            "--schedule-epochs", "6"]
    r = subprocess.run([sys.executable, "-m", "fastvit", *map(str, args)], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        assert 0 <= row["knn_acc1"] <= row["knn_acc5"] <= 100
    # lr of the last step (3) on the 6-epoch schedule (12 steps, 2 warm-up): not the 2-epoch one (0.5 of peak)
    assert rows[-1]["lr"] == pytest.approx(1e-6 + (1e-3 - 1e-6) * (1 + math.cos(math.pi * 1 / 10)) / 2)
    assert rows[-1]["knn_acc1"] > 30  # grey level codes the class (conftest): even a young backbone's kNN sees it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("epoch/knn_acc1")] == pytest.approx([row["knn_acc1"] for row in rows])

    # eval --knn of the last checkpoint, same bank / test / batch: the same number
    r = subprocess.run([sys.executable, "-m", "fastvit", "eval", "--knn", "--ckpt", str(out / "last.pt"),
                        "--data-dir", str(fmnist_dir), "--cache-dir", str(cache_dir), "--knn-bank", "256",
                        "--knn-test", "128", "--batch-size", "64"], capture_output=True, text=True, timeout=600,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["knn_acc1"] == rows[-1]["knn_acc1"]
