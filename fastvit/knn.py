"""k-NN accuracy of a backbone's pooled features: the standard monitor of self-supervised learning.

As DINO's eval_knn: features L2-normalized, cosine similarity to a labelled bank, the k = 20 most similar
bank images vote for their class with weight exp(similarity / 0.07); top-1 / top-5 of the votes.
Ties are broken deterministically: among bank images of equal similarity the lower index is a neighbour
first; among classes of equal votes the lower class index ranks first.

Cost: one no-grad forward per bank and test image, then a chunked (queries x bank) matmul; --knn-bank /
--knn-test bound both (the first N images of each split).
"""

from itertools import islice
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fastvit import loaders

K, TEMPERATURE = 20, 0.07


class LabelledSplit:
    """The first `limit` images of a .beton split as (uint8 NCHW, labels) batches on `device`.

    Fixed-size splits are decoded once and kept on the device; JPEG-stored ones are read through FFCV,
    centre-cropped to img_size, each time.
    """

    def __init__(self, path: Path, limit: int | None, img_size: int, device, batch_size: int,
                 num_workers: int = 2):
        meta = loaders.read_meta(path)
        self.batch_size = batch_size
        self.count = meta["count"] if limit is None else min(limit, meta["count"])
        if meta["storage"] == "jpeg" or meta.get("variable_size"):
            self.images = None
            self.loader = loaders.FFCVLoader(path, batch_size=batch_size, device=device, shuffle=False,
                                             drop_last=False, img_size=img_size, num_workers=num_workers)
        else:
            images, labels = loaders.load_arrays(path)
            self.images = torch.as_tensor(images[: self.count]).to(device).permute(0, 3, 1, 2).contiguous()
            self.labels = torch.as_tensor(labels[: self.count]).to(device)

    def batches(self):
        if self.images is not None:
            for i in range(0, self.count, self.batch_size):
                yield self.images[i : i + self.batch_size], self.labels[i : i + self.batch_size]
            return
        left = self.count
        for images, labels in islice(iter(self.loader), -(-self.count // self.batch_size)):
            yield images[:left], labels[:left]
            left -= len(labels)

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)


@torch.no_grad()
def features(model, split: LabelledSplit, transform, precision: str = "fp32", desc: str = "k-NN features",
             show_progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2-normalized pooled features [N, D] fp32, labels [N]) of `model.forward_features(x)[0]`, eval mode."""
    from fastvit.train import autocast

    was_training = model.training
    model.eval()
    feats, labels = [], []
    for images, y in tqdm(split.batches(), total=len(split), desc=desc, disable=not show_progress, leave=False):
        x = transform(images)
        with autocast(x.device, precision):
            pooled = model.forward_features(x)[0]
        feats.append(F.normalize(pooled.float(), dim=1))
        labels.append(y)
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def label_ranks(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
                num_classes: int, k: int = K, temperature: float = TEMPERATURE, chunk: int = 256) -> torch.Tensor:
    """For each query, the rank of its true class among the k-NN votes (0: top-1), ties broken as above.

    bank [N, D] and queries [Q, D] are L2-normalized; labels int64. Chunks of `chunk` queries bound the
    (chunk, N) similarity block held at once. No host sync.
    """
    k = min(k, len(bank))
    one_hot = F.one_hot(bank_labels, num_classes).to(bank.dtype)  # (N, C)
    classes = torch.arange(num_classes, device=bank.device)
    ranks = []
    for start in range(0, len(queries), chunk):
        q, y = queries[start : start + chunk], query_labels[start : start + chunk]
        sim = q @ bank.T  # (c, N) cosine similarities
        kth = sim.topk(k, dim=1).values[:, -1:]  # (c, 1): the k-th largest similarity
        above = sim > kth
        # fill the k places: every bank image above the k-th value, then tied ones by increasing index
        tied = (sim == kth) & (torch.cumsum(sim == kth, dim=1) <= k - above.sum(1, keepdim=True))
        weights = torch.where(above | tied, torch.exp(sim / temperature), 0.0)  # (c, N)
        votes = weights @ one_hot  # (c, C)
        mine = votes.gather(1, y[:, None])  # (c, 1)
        ranks.append((votes > mine).sum(1) + ((votes == mine) & (classes < y[:, None])).sum(1))
    return torch.cat(ranks)


def knn_accuracy(model, bank_split: LabelledSplit, test_split: LabelledSplit, transform, precision: str = "fp32",
                 k: int = K, temperature: float = TEMPERATURE, show_progress: bool = True) -> dict:
    """{"knn_acc1", "knn_acc5"} in % of the test split, the bank split as labelled neighbours."""
    bank, bank_labels = features(model, bank_split, transform, precision, "k-NN bank", show_progress)
    queries, labels = features(model, test_split, transform, precision, "k-NN test", show_progress)
    num_classes = int(max(bank_labels.max(), labels.max()).item()) + 1  # one sync, after the forwards
    ranks = label_ranks(bank, bank_labels, queries, labels, num_classes, k, temperature)
    top1, top5 = (ranks == 0).double().mean().item(), (ranks < 5).double().mean().item()
    return {"knn_acc1": 100 * top1, "knn_acc5": 100 * top5}
