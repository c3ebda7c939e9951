"""Loaders: every sample exactly once (r times with repeats) per epoch, rank shards partition the epoch,
seeded and epoch-dependent order, exact mid-epoch resume; the FFCV loader against the file it reads."""

import collections

import numpy as np
import pytest
import torch

from fastvit.errors import UserError
from fastvit.loaders.pipeline import ResidentLoader


def numbered_images(n: int, height: int = 3, width: int = 2) -> np.ndarray:
    """uint8 [n, H, W, 3] random images whose top-left pixel encodes the sample index (red: low byte,
    green: high byte), so a batch can be traced back to the samples it holds."""
    rng = np.random.default_rng(123)
    images = rng.integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 0, 1] = np.arange(n) // 256
    return images


def decode_ids(batch_images: torch.Tensor) -> list[int]:
    """Sample indices from a uint8 [B, C, H, W] batch of `numbered_images`."""
    low = batch_images[:, 0, 0, 0].long()
    high = batch_images[:, 1, 0, 0].long()
    return (low + 256 * high).tolist()


def epoch_ids(loader) -> list[int]:
    ids = []
    for images, labels in loader:
        batch_ids = decode_ids(images)
        assert batch_ids == labels.tolist(), "images and labels must stay paired"
        ids += batch_ids
    return ids


def make(n=60, **kw):
    kw.setdefault("batch_size", 5)
    return ResidentLoader(numbered_images(n), np.arange(n), **kw)


# --- resident: content, layout, length -----------------------------------------------------------


def test_batches_are_uint8_nchw_copies_of_the_source_images():
    source = numbered_images(20, height=3, width=2)
    loader = ResidentLoader(source, np.arange(20), batch_size=4, device="cpu", seed=3)
    count = 0
    for images, labels in loader:
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert images.shape == (4, 3, 3, 2) and images.is_contiguous()
        assert images.device == torch.device("cpu") and labels.device == torch.device("cpu")
        expected = torch.from_numpy(source[labels.numpy()]).permute(0, 3, 1, 2)  # (B, C, H, W)
        assert torch.equal(images, expected)
        count += 1
    assert count == len(loader) == 5


@pytest.mark.parametrize("shape", [(4, 4, 3), (5, 4, 1), (3, 2, 3), (3, 3, 1)])  # rows of 48, 20, 18, 9 bytes
def test_gather_is_exact_for_every_row_width(shape):
    # rows are gathered as int64 / int32 / int16 / uint8 words depending on their byte count
    source = np.random.default_rng(1).integers(0, 256, size=(30, *shape), dtype=np.uint8)
    loader = ResidentLoader(source, np.arange(30), batch_size=7, seed=4)
    seen = []
    for images, labels in loader:
        assert images.dtype == torch.uint8 and images.shape == (7, shape[2], shape[0], shape[1])
        assert torch.equal(images, torch.from_numpy(source[labels.numpy()]).permute(0, 3, 1, 2))
        seen += labels.tolist()
    assert len(set(seen)) == 28


def test_single_channel_images_keep_one_channel():
    source = np.random.default_rng(0).integers(0, 256, size=(8, 5, 4, 1), dtype=np.uint8)
    images, labels = next(iter(ResidentLoader(source, np.arange(8), batch_size=8, shuffle=False)))
    assert images.shape == (8, 1, 5, 4)
    assert torch.equal(images[:, 0], torch.from_numpy(source[..., 0]))
    assert labels.tolist() == list(range(8))


def test_every_sample_exactly_once_per_epoch():
    loader = make(300, batch_size=6, seed=11)
    for _ in range(3):
        ids = epoch_ids(loader)
        assert sorted(ids) == list(range(300))


def test_no_shuffle_keeps_file_order():
    assert epoch_ids(make(60, shuffle=False)) == list(range(60))


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_rank_shards_partition_the_epoch(world_size):
    # 60 samples split exactly into world_size x batches of 5: no trim, no pad.
    shards = [epoch_ids(make(60, rank=r, world_size=world_size, seed=5)) for r in range(world_size)]
    assert len({len(s) for s in shards}) == 1
    assert sorted(sum(shards, [])) == list(range(60))


def test_drop_last_trims_to_full_batches_on_every_rank():
    # 61 samples, 2 ranks x batch 7: 4 batches per rank (56 samples), 5 trimmed, none repeated.
    loaders = [make(61, batch_size=7, rank=r, world_size=2, seed=1) for r in range(2)]
    shards = [epoch_ids(loader) for loader in loaders]
    assert [len(loader) for loader in loaders] == [4, 4]
    assert [len(s) for s in shards] == [28, 28]
    seen = sum(shards, [])
    assert len(set(seen)) == 56 and set(seen) <= set(range(61))
    # The trimmed samples come from the permutation's tail, so they change with the epoch.
    next_epoch = sum((epoch_ids(loader) for loader in loaders), [])
    assert set(next_epoch) != set(seen)


def test_no_drop_last_pads_by_wrapping_so_ranks_stay_equal():
    # 61 samples on 3 ranks: padded to 63 (two samples twice), 21 per rank = batches 7+7+7 or 5,5,5,5,1.
    loaders = [make(61, batch_size=5, rank=r, world_size=3, drop_last=False, seed=2) for r in range(3)]
    shards = [epoch_ids(loader) for loader in loaders]
    assert [len(loader) for loader in loaders] == [5, 5, 5]
    assert [len(s) for s in shards] == [21, 21, 21]
    counts = collections.Counter(sum(shards, []))
    assert set(counts) == set(range(61))
    assert sorted(counts.values()) == [1] * 59 + [2] * 2
    # The padding repeats the first samples of this epoch's permutation (one rank sees it whole).
    permutation = epoch_ids(make(61, batch_size=5, drop_last=False, seed=2))
    assert {i for i, c in counts.items() if c == 2} == set(permutation[:2])
    batch_sizes = [len(labels) for _, labels in loaders[0]]
    assert batch_sizes == [5, 5, 5, 5, 1]


def test_too_few_samples_for_one_batch_is_a_user_error():
    with pytest.raises(UserError, match="no full batch of 8 on each of 4 ranks"):
        make(20, batch_size=8, world_size=4)
    assert len(make(20, batch_size=8, world_size=4, drop_last=False)) == 1


# --- resident: repeated augmentation -----------------------------------------------------------------


def test_repeats_show_every_sample_r_times_and_lengthen_the_epoch():
    plain, repeated = make(60, batch_size=6), make(60, batch_size=6, repeats=3)
    assert len(repeated) == 3 * len(plain)
    ids = epoch_ids(repeated)
    counts = collections.Counter(ids)
    assert set(counts) == set(range(60)) and set(counts.values()) == {3}
    # on one rank: three independently shuffled passes, as paper A's sampler
    passes = [ids[:60], ids[60:120], ids[120:]]
    assert all(sorted(p) == list(range(60)) for p in passes)
    assert passes[0] != passes[1] != passes[2] != passes[0]
    assert epoch_ids(make(60, batch_size=6, repeats=3, shuffle=False)) == list(range(60)) * 3


@pytest.mark.parametrize("world_size", [3, 4])
def test_repeats_of_one_image_go_to_different_ranks(world_size):
    # 60 x 3 = 180 entries; batch 5 x world_size divides 180 for both sizes, so nothing is trimmed.
    shards = [
        epoch_ids(make(60, repeats=3, rank=r, world_size=world_size, seed=9)) for r in range(world_size)
    ]
    total = collections.Counter(sum(shards, []))
    assert set(total.values()) == {3} and set(total) == set(range(60))
    for i in range(60):
        ranks_holding = [r for r, shard in enumerate(shards) if i in shard]
        assert len(ranks_holding) == 3, f"sample {i} on ranks {ranks_holding}"


# --- resident: seeded order, epochs, resume ----------------------------------------------------------


def test_same_seed_same_order_and_different_seeds_or_epochs_differ():
    a, b, c = make(seed=4), make(seed=4), make(seed=5)
    first_a, first_b, first_c = epoch_ids(a), epoch_ids(b), epoch_ids(c)
    assert first_a == first_b
    assert first_a != first_c
    second_a = epoch_ids(a)  # the loader moves on to epoch 1 by itself
    assert second_a != first_a and sorted(second_a) == sorted(first_a)
    assert a.epoch == 2


def test_epoch_order_depends_only_on_seed_and_epoch():
    walked = make(seed=7)
    for _ in range(4):
        epoch_ids(walked)
    jumped = make(seed=7)
    jumped.set_epoch(4)
    assert epoch_ids(jumped) == epoch_ids(walked)
    # and it is a fresh generator seeded from both: global RNG state plays no part
    torch.manual_seed(1234)
    np.random.seed(1234)
    again = make(seed=7)
    again.set_epoch(4)
    assert again.epoch_indices(4).tolist() == jumped.epoch_indices(4).tolist()


def test_resume_mid_epoch_yields_exactly_the_remaining_batches():
    original = make(60, batch_size=4, seed=3, repeats=2, world_size=2, rank=1)
    original.set_epoch(2)
    full = [(x.clone(), y.clone()) for x, y in original]
    assert len(full) == len(original) == 15

    interrupted = make(60, batch_size=4, seed=3, repeats=2, world_size=2, rank=1)
    interrupted.set_epoch(2)
    iterator = iter(interrupted)
    for _ in range(6):
        next(iterator)
    state = interrupted.state_dict()
    assert (state["epoch"], state["batch"]) == (2, 6)

    resumed = make(60, batch_size=4, seed=3, repeats=2, world_size=2, rank=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a loop calling set_epoch for the resumed epoch keeps the position
    rest = list(resumed)
    assert len(rest) == 9
    for (x, y), (x_ref, y_ref) in zip(rest, full[6:], strict=True):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    # after the resumed epoch the loader continues with the next one from its start
    assert (resumed.epoch, resumed.next_batch) == (3, 0)
    assert len(list(resumed)) == 15


def test_state_saved_at_the_end_of_an_epoch_resumes_into_the_next():
    loader = make(seed=1)
    epoch_ids(loader)
    resumed = make(seed=1)
    resumed.load_state_dict(loader.state_dict())
    reference = make(seed=1)
    reference.set_epoch(1)
    assert epoch_ids(resumed) == epoch_ids(reference)


def test_state_from_other_settings_is_refused():
    state = make(seed=1, batch_size=5).state_dict()
    with pytest.raises(UserError, match="batch_size=5 but this loader has batch_size=6"):
        make(seed=1, batch_size=6).load_state_dict(state)
    with pytest.raises(UserError, match="seed=1 but this loader has seed=2"):
        make(seed=2, batch_size=5).load_state_dict(state)
    with pytest.raises(UserError, match="missing epoch, batch"):
        make(seed=1).load_state_dict({"seed": 1})
    with pytest.raises(UserError, match="batch 99 is outside 0..12"):
        make(seed=1).load_state_dict({**state, "batch": 99})


# --- resident: input validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": np.zeros((4, 2, 2, 3), np.float32)}, "uint8 \\[N, H, W, C\\], got torch.float32"),
        ({"images": np.zeros((4, 2, 2), np.uint8)}, "images must be uint8 \\[N, H, W, C\\]"),
        ({"labels": np.arange(5)}, "labels must be integer \\[N\\] with N = 4"),
        ({"labels": np.zeros(4, np.float32)}, "labels must be integer"),
        ({"labels": None}, "labels are required"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"rank": 2, "world_size": 2}, "rank must be in 0..1 for world_size 2"),
        ({"repeats": 0}, "repeats must be a positive integer"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"images": np.zeros((0, 2, 2, 3), np.uint8), "labels": np.arange(0)}, "the dataset is empty"),
    ],
)
def test_bad_arguments_are_user_errors(kwargs, message):
    args = {"images": np.zeros((4, 2, 2, 3), np.uint8), "labels": np.arange(4), "batch_size": 2, **kwargs}
    with pytest.raises(UserError, match=message):
        ResidentLoader(args.pop("images"), args.pop("labels"), **args)


def test_set_epoch_rejects_negative():
    with pytest.raises(UserError, match="epoch must be a non-negative integer"):
        make().set_epoch(-1)


# --- ffcv ------------------------------------------------------------------------------------------


def write_beton(path, images: np.ndarray, field: str) -> None:
    """A .beton with FFCV's own writer: `image` as NDArrayField or raw RGBImageField, `label` IntField."""
    from ffcv.fields import IntField, NDArrayField, RGBImageField
    from ffcv.writer import DatasetWriter

    class Samples:
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return images[i], int(i)

    if field == "ndarray":
        image_field = NDArrayField(np.dtype(np.uint8), images.shape[1:])
    else:
        image_field = RGBImageField(write_mode="raw")
    writer = DatasetWriter(str(path), {"image": image_field, "label": IntField()}, num_workers=1)
    writer.from_indexed_dataset(Samples())


@pytest.fixture(scope="module")
def betons(tmp_path_factory):
    """{"ndarray" | "rgb": (path, images uint8 [N, H, W, C])}: 43 samples whose label is their index."""
    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("betons")
    images = numbered_images(43, height=6, width=5)
    files = {}
    for field in ("ndarray", "rgb"):
        write_beton(root / f"{field}.beton", images, field)
        files[field] = (root / f"{field}.beton", images)
    torch.set_num_threads(threads)  # the test's own ffcv import; the loader restores its own
    return files


def ffcv_epoch(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch, copied out of FFCV's reused buffers."""
    return [(images.clone(), labels.clone()) for images, labels in loader]


# Loaders after the first use num_workers=1: numba then compiles FFCV's ops as serial loops, several
# times faster than the parallel (prange) versions the first test covers.
# numba's dispatcher finalizer trips over FFCV's recompiled closures at garbage collection: harmless.
ignore_numba_finalizer = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def assert_pairs_match_source(batches, source):
    for images, labels in batches:
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert images.shape[1:] == (3, 6, 5) and images.is_contiguous()
        expected = torch.from_numpy(source[labels.numpy()]).permute(0, 3, 1, 2)  # (B, C, H, W)
        assert torch.equal(images, expected)


@ignore_numba_finalizer
def test_ffcv_loader_yields_the_files_images_once_each(betons):
    from fastvit.loaders.pipeline import FFCVLoader

    path, source = betons["rgb"]
    threads = torch.get_num_threads()
    loader = FFCVLoader(path, batch_size=8, device="cpu", shuffle=True, drop_last=False, seed=2)
    assert torch.get_num_threads() == threads
    first = ffcv_epoch(loader)
    assert torch.get_num_threads() == threads
    assert len(first) == len(loader) == 6 and [len(y) for _, y in first] == [8] * 5 + [3]
    assert_pairs_match_source(first, source)
    ids = torch.cat([y for _, y in first]).tolist()
    assert sorted(ids) == list(range(43))
    # next epoch: the same multiset in another order
    second = torch.cat([y for _, y in ffcv_epoch(loader)]).tolist()
    assert sorted(second) == list(range(43)) and second != ids


@ignore_numba_finalizer
def test_ffcv_repeats_and_resume_mid_epoch(betons):
    from fastvit.loaders.pipeline import FFCVLoader

    path, source = betons["ndarray"]
    loader = FFCVLoader(path, batch_size=6, seed=5, repeats=2, num_workers=1)
    assert len(loader) == 86 // 6
    loader.set_epoch(3)
    full = ffcv_epoch(loader)
    assert_pairs_match_source(full, source)
    counts = collections.Counter(torch.cat([y for _, y in full]).tolist())
    # 86 shuffled copies, 2 dropped with the short last batch
    assert max(counts.values()) == 2 and sum(counts.values()) == 84 and len(counts) >= 41

    loader.set_epoch(3)
    iterator = iter(loader)
    for _ in range(5):
        next(iterator)
    iterator.close()  # leave mid-epoch, as an interrupted run does
    state = loader.state_dict()
    assert (state["epoch"], state["batch"]) == (3, 5)
    resumed = FFCVLoader(path, batch_size=6, seed=5, repeats=2, num_workers=1)
    resumed.load_state_dict(state)
    rest = ffcv_epoch(resumed)
    assert len(rest) == len(full) - 5
    for (x, y), (x_ref, y_ref) in zip(rest, full[5:], strict=True):
        assert torch.equal(y, y_ref) and torch.equal(x, x_ref)
    assert (resumed.epoch, resumed.next_batch) == (4, 0)


@ignore_numba_finalizer
def test_ffcv_random_resized_crop(betons):
    from fastvit.loaders.pipeline import FFCVLoader

    path, source = betons["rgb"]
    loader = FFCVLoader(
        path, batch_size=8, img_size=4, random_resized_crop=True, rrc_scale=(0.3, 0.6), num_workers=1
    )
    images = torch.cat([x for x, _ in ffcv_epoch(loader)])
    assert images.shape == (40, 3, 4, 4) and images.dtype == torch.uint8
    # a resized crop of numbered images still has their pixel statistics, not zeros
    assert abs(images.float().mean().item() - source.mean()) < 20


@ignore_numba_finalizer
def test_ffcv_quasi_random_order_without_os_cache(betons):
    from fastvit.loaders.pipeline import FFCVLoader

    path, source = betons["ndarray"]
    loader = FFCVLoader(path, batch_size=8, order="quasi_random", os_cache=False, seed=3, num_workers=1)
    first = ffcv_epoch(loader)
    assert_pairs_match_source(first, source)
    ids = torch.cat([y for _, y in first]).tolist()
    assert len(ids) == 40 and len(set(ids)) == 40 and ids != sorted(ids)
    assert torch.cat([y for _, y in ffcv_epoch(loader)]).tolist() != ids
    # FFCV's quasi-random draw mutates its page table; the loader makes the order a function of
    # (seed, epoch) again, so a state from epoch 0 batch 2 resumes exactly after other epochs ran
    loader.load_state_dict({**loader.state_dict(), "epoch": 0, "batch": 2})
    rest = torch.cat([y for _, y in ffcv_epoch(loader)]).tolist()
    assert rest == ids[16:]


@ignore_numba_finalizer
def test_ffcv_sequential_center_crop_and_flip(betons):
    from fastvit.loaders.pipeline import FFCVLoader

    path, source = betons["rgb"]
    # A 5x5 center crop (ratio 1 of the short side) of a 6x5 image resized to 5 is its rows 0..4
    # ((6 - 5) // 2 = 0), so every output is exactly those pixels or their mirror image.
    loader = FFCVLoader(
        path, batch_size=8, img_size=5, center_crop_ratio=1.0, flip=True, shuffle=False, num_workers=1
    )
    batches = ffcv_epoch(loader)
    assert len(batches) == len(loader) == 5  # drop_last: 40 of 43
    assert torch.cat([y for _, y in batches]).tolist() == list(range(40))  # file order
    crops = torch.from_numpy(source[:40, :5]).permute(0, 3, 1, 2)  # (40, C, 5, 5)
    flipped = 0
    for image, crop in zip(torch.cat([x for x, _ in batches]), crops, strict=True):
        if torch.equal(image, crop.flip(-1)):
            flipped += 1
        else:
            assert torch.equal(image, crop)
    assert 4 <= flipped <= 36  # Binomial(40, 0.5) falls outside with probability < 1e-5


@ignore_numba_finalizer
def test_ffcv_crop_of_raw_arrays_is_bilinear(betons):
    from fastvit.loaders.pipeline import FFCVLoader

    path, source = betons["ndarray"]
    # the 5x5 center crop (rows 0..4) of each 6x5 array, resized to 3x3 (a 5/3 scale)
    loader = FFCVLoader(path, batch_size=8, img_size=3, center_crop_ratio=1.0, shuffle=False, num_workers=1)
    images = torch.cat([x for x, _ in ffcv_epoch(loader)])
    crops = torch.from_numpy(source[:40, :5]).permute(0, 3, 1, 2).double()  # (40, C, 5, 5)
    expected = torch.nn.functional.interpolate(crops, size=(3, 3), mode="bilinear", align_corners=False)
    assert images.shape == (40, 3, 3, 3)
    assert (images.double() - expected).abs().max() <= 0.5 + 1e-6  # rounded to the nearest integer


@ignore_numba_finalizer
def test_ffcv_loader_user_errors(betons, tmp_path):
    from fastvit.loaders.pipeline import FFCVLoader

    path, _ = betons["ndarray"]
    with pytest.raises(UserError, match="no such .beton file"):
        FFCVLoader(tmp_path / "missing.beton", batch_size=4)
    (tmp_path / "junk.beton").write_bytes(b"not a beton" * 100)
    with pytest.raises(UserError, match="is not a readable FFCV .beton file"):
        FFCVLoader(tmp_path / "junk.beton", batch_size=4)
    with pytest.raises(UserError, match="unknown loader order 'shuffled'; choose one of random, quasi_rand"):
        FFCVLoader(path, batch_size=4, order="shuffled")
    with pytest.raises(UserError, match="quasi_random' works on a single process without repeats"):
        FFCVLoader(path, batch_size=4, order="quasi_random", repeats=3)
    with pytest.raises(UserError, match="world_size=2 needs torch.distributed initialized"):
        FFCVLoader(path, batch_size=4, rank=1, world_size=2)
    with pytest.raises(UserError, match="random_resized_crop needs img_size"):
        FFCVLoader(path, batch_size=4, random_resized_crop=True)


# --- .beton paths and make_loader ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A fastvit .beton with its sidecar (loaders.beton.write_split): 50 numbered 6x5x3 images."""
    from fastvit.loaders.beton import write_split
    from fastvit.loaders.sources.common import Split

    threads = torch.get_num_threads()
    images = numbered_images(50, height=6, width=5)
    path = tmp_path_factory.mktemp("prepared") / "toy-train.beton"
    split = Split(labels=np.arange(50) % 10, images=images)
    write_split(path, split, dataset="toy", split_name="train", classes=[str(i) for i in range(10)],
                progress=False)
    torch.set_num_threads(threads)
    return path, images


def test_resident_loader_reads_a_beton_path(prepared):
    path, source = prepared
    loader = ResidentLoader(path, batch_size=10, shuffle=False)
    batches = list(loader)
    images = torch.cat([x for x, _ in batches])
    assert torch.equal(images, torch.from_numpy(source).permute(0, 3, 1, 2))
    assert torch.cat([y for _, y in batches]).tolist() == [i % 10 for i in range(50)]
    with pytest.raises(UserError, match="pass labels=None with a .beton path"):
        ResidentLoader(path, np.arange(50), batch_size=10)


def test_make_loader_picks_resident_when_the_split_fits(prepared):
    from fastvit.loaders.beton import read_meta
    from fastvit.loaders.pipeline import decoded_bytes, make_loader

    path, _ = prepared
    need = decoded_bytes(read_meta(path))
    assert need == 50 * (6 * 5 * 3 + 8)
    # JPEG splits of mixed sizes cannot be one resident tensor
    assert decoded_bytes({**read_meta(path), "variable_size": True}) is None
    resident = make_loader("auto", path, batch_size=10, seed=1, num_workers=3, os_cache=False)
    assert isinstance(resident, ResidentLoader) and len(resident) == 5
    explicit = make_loader("resident", path, batch_size=10, seed=1)
    for (x, y), (x_ref, y_ref) in zip(explicit, resident, strict=True):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    with pytest.raises(UserError, match="resident loader does not take flip, img_size; use the ffcv loader"):
        make_loader("resident", path, batch_size=10, flip=True, img_size=6)
    with pytest.raises(UserError, match="unknown loader 'gpu'; choose one of resident, ffcv, auto"):
        make_loader("gpu", path, batch_size=10)


@ignore_numba_finalizer
def test_make_loader_picks_ffcv_over_budget_or_for_ffcv_image_options(prepared):
    from fastvit.loaders.pipeline import FFCVLoader, make_loader

    path, source = prepared
    over = make_loader("auto", path, batch_size=10, shuffle=False, memory_budget=50 * 98 - 1, num_workers=1)
    assert isinstance(over, FFCVLoader)
    batches = ffcv_epoch(over)
    assert torch.equal(torch.cat([x for x, _ in batches]), torch.from_numpy(source).permute(0, 3, 1, 2))
    assert isinstance(make_loader("auto", path, batch_size=10, memory_budget=50 * 98), ResidentLoader)
    # a flip at decode time is an FFCV option; the compiled pipeline is only built on iteration
    assert isinstance(make_loader("auto", path, batch_size=10, flip=True), FFCVLoader)


DISTRIBUTED_RANK = """
import json, sys
import torch.distributed as dist
from fastvit.errors import UserError
from fastvit.loaders.pipeline import FFCVLoader

path, rank, store = sys.argv[1], int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
try:
    FFCVLoader(path, batch_size=4, rank=1 - rank, world_size=2)
    mismatch = None
except UserError as error:
    mismatch = str(error)
loader = FFCVLoader(path, batch_size=4, rank=rank, world_size=2, drop_last=False, seed=3, num_workers=1)
epochs = [[label for _, labels in loader for label in labels.tolist()] for _ in range(2)]
print(json.dumps({"epochs": epochs, "batches": len(loader), "mismatch": mismatch}))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ffcv_distributed_ranks_partition_the_epoch(betons, tmp_path):
    import json
    import subprocess
    import sys

    path, _ = betons["ndarray"]
    store = tmp_path / "store"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DISTRIBUTED_RANK, str(path), str(rank), str(store)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    for result in results:
        assert "differ from the process group's" in result["mismatch"]
        assert result["batches"] == 6  # 43 samples padded to 44, 22 per rank, batches of 4
    for epoch in range(2):
        shards = [result["epochs"][epoch] for result in results]
        assert [len(s) for s in shards] == [22, 22]
        counts = collections.Counter(shards[0] + shards[1])
        assert set(counts) == set(range(43)) and sorted(counts.values()) == [1] * 42 + [2]
    assert results[0]["epochs"][0] != results[0]["epochs"][1]


@ignore_numba_finalizer
def test_ffcv_decodes_jpeg_splits_of_mixed_sizes(tmp_path):
    """The ffcv loader's main use: a JPEG .beton (images > 64 px, sizes vary), center-cropped and
    resized at decode time."""
    from PIL import Image

    from fastvit.loaders.beton import write_split
    from fastvit.loaders.pipeline import FFCVLoader
    from fastvit.loaders.sources.common import Split

    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]
    files = []
    for i in range(12):
        file = tmp_path / f"{i}.jpg"
        Image.new("RGB", (70 + 3 * i, 90 - 2 * i), colors[i % 4]).save(file, quality=95)
        files.append(file)
    path = tmp_path / "photos-train.beton"
    threads = torch.get_num_threads()
    write_split(path, Split(labels=np.arange(12) % 4, files=files), dataset="photos", split_name="train",
                classes=["r", "g", "b", "y"], progress=False, num_workers=1)
    torch.set_num_threads(threads)

    with pytest.raises(UserError, match="holds images of different sizes; pass img_size"):
        FFCVLoader(path, batch_size=4)
    loader = FFCVLoader(path, batch_size=4, img_size=16, shuffle=False, num_workers=1)
    batches = ffcv_epoch(loader)
    images, labels = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    assert images.shape == (12, 3, 16, 16) and labels.tolist() == [i % 4 for i in range(12)]
    expected = torch.tensor(colors, dtype=torch.float32)[labels][:, :, None, None]  # (12, 3, 1, 1)
    assert (images.float() - expected).abs().max() <= 8  # JPEG's error on flat colours
