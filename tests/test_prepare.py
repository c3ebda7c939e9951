"""prepare / ensure_prepared / info on Fashion-MNIST-format files the tests write, and the real
Fashion-MNIST from the Debian package when installed."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from fastvit.errors import UserError
from fastvit.loaders import DATASETS, ensure_prepared, info, load_arrays, prepare, read_meta

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (gzip when the name ends in .gz), big-endian header, uint8 values."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_fashion(root: Path, rng, n_train=30, n_test=12) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[prefix] = (images, labels)
    return arrays


def test_datasets_lists_every_supported_name():
    assert set(DATASETS) == {
        "cifar10", "cifar100", "svhn", "cinic10", "tiny-imagenet",
        "aircraft", "cars", "flowers102", "fashion-mnist", "imagefolder",
    }  # fmt: skip


def test_prepare_fashion_round_trip_and_info(tmp_path):
    arrays = write_fashion(tmp_path / "src", np.random.default_rng(0))
    train, test = prepare("fashion-mnist", tmp_path / "src", tmp_path / "out", progress=False)
    assert train.name == "fashion-mnist-train.beton" and test.name == "fashion-mnist-test.beton"
    for path, prefix in ((train, "train"), (test, "t10k")):
        images, labels = load_arrays(path)
        np.testing.assert_array_equal(images, arrays[prefix][0][..., None])
        np.testing.assert_array_equal(labels, arrays[prefix][1])
    meta = read_meta(train)
    assert meta["dataset"] == "fashion-mnist" and meta["split"] == "train"
    assert (meta["count"], meta["height"], meta["width"], meta["channels"]) == (30, 28, 28, 1)
    assert meta["classes"][0] == "T-shirt/top" and meta["num_classes"] == 10
    text = info(test)
    assert "samples   12" in text and "28x28x1" in text and "raw" in text and "Ankle boot" in text
    # `prepare` stays callable after the module of the same name has been imported
    import fastvit.loaders as loaders

    assert callable(loaders.prepare)


def test_ensure_prepared_uses_cache_then_rebuilds_damaged(tmp_path):
    write_fashion(tmp_path / "src", np.random.default_rng(1))
    cache = tmp_path / "cache"
    train, test = ensure_prepared("fashion-mnist", data_dir=tmp_path / "src", cache_dir=cache)
    assert train.parent == cache and read_meta(test)["count"] == 12
    stamp = train.stat().st_mtime_ns
    assert ensure_prepared("fashion-mnist", data_dir=tmp_path / "src", cache_dir=cache) == (train, test)
    assert train.stat().st_mtime_ns == stamp  # reused, not rewritten
    with open(train, "r+b") as f:  # damage: the sidecar's size no longer matches
        f.truncate(train.stat().st_size - 1)
    ensure_prepared("fashion-mnist", data_dir=tmp_path / "src", cache_dir=cache)
    assert load_arrays(train)[0].shape == (30, 28, 28, 1)


def test_ensure_prepared_redoes_cache_from_another_source(tmp_path):
    write_fashion(tmp_path / "a", np.random.default_rng(3))
    b = write_fashion(tmp_path / "b", np.random.default_rng(4), n_train=20)
    ensure_prepared("fashion-mnist", data_dir=tmp_path / "a", cache_dir=tmp_path / "cache")
    train, _ = ensure_prepared("fashion-mnist", data_dir=tmp_path / "b", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(load_arrays(train)[0][..., 0], b["train"][0])
    assert read_meta(train)["source"] == str((tmp_path / "b").resolve())


def test_ensure_prepared_accepts_a_dir_of_prepared_files(tmp_path):
    write_fashion(tmp_path / "src", np.random.default_rng(2))
    prepare("fashion-mnist", tmp_path / "src", tmp_path / "ready", progress=False)
    pair = ensure_prepared("fashion-mnist", data_dir=tmp_path / "ready", cache_dir=tmp_path / "cache")
    assert pair[0].parent == tmp_path / "ready" and not (tmp_path / "cache").exists()


def test_missing_sources_say_how_to_get_them(tmp_path):
    with pytest.raises(UserError, match=r"fastvit data prepare svhn --src DIR .*--download"):
        ensure_prepared("svhn", data_dir=None, cache_dir=tmp_path)
    with pytest.raises(UserError, match="unknown dataset 'mnist'.*cifar10"):
        prepare("mnist", tmp_path, tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz: missing"):
        prepare("fashion-mnist", tmp_path / "empty", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_default_location(tmp_path):
    train, test = ensure_prepared("fashion-mnist", data_dir=None, cache_dir=tmp_path)
    images, labels = load_arrays(train)
    assert images.shape == (60000, 28, 28, 1) and images.dtype == np.uint8
    assert labels.min() == 0 and labels.max() == 9
    assert np.bincount(labels).tolist() == [6000] * 10
    # byte-exact against an independent decode of the IDX files
    raw = gzip.decompress((REAL_FASHION / "train-images-idx3-ubyte.gz").read_bytes())
    assert raw[:4] == b"\x00\x00\x08\x03"
    np.testing.assert_array_equal(images.reshape(-1), np.frombuffer(raw, np.uint8, offset=16))
    test_images, test_labels = load_arrays(test)
    assert test_images.shape == (10000, 28, 28, 1) and np.bincount(test_labels).tolist() == [1000] * 10
    meta = read_meta(train)
    # the published Fashion-MNIST training-set pixel mean/std (0.2860, 0.3530 on the 0-1 scale)
    assert abs(meta["mean"][0] / 255 - 0.2860) < 5e-4 and abs(meta["std"][0] / 255 - 0.3530) < 5e-4


def test_damaged_prepared_files_are_named_not_taken_for_a_source(tmp_path):
    """A folder of prepared files (--data-dir) or a cache with no source to rebuild from: a damaged
    file is reported as such, not as "no data" or a missing standard file."""
    from fastvit.loaders import beton

    write_fashion(tmp_path / "src", np.random.default_rng(5))
    train, _ = prepare("fashion-mnist", tmp_path / "src", tmp_path / "ready", progress=False)
    side = beton.sidecar_path(train)
    side.write_text(side.read_text().replace('"count": 30', '"count": 31'))
    with pytest.raises(UserError, match="fashion-mnist-train.beton: 30 samples, its sidecar says 31"):
        ensure_prepared("fashion-mnist", data_dir=tmp_path / "ready", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    # the same pair as a cache: with its source gone, the reason; with the source there, rebuilt
    (tmp_path / "src").rename(tmp_path / "gone")
    with pytest.raises(UserError, match="30 samples, its sidecar says 31"):
        ensure_prepared("fashion-mnist", data_dir=tmp_path / "src", cache_dir=tmp_path / "ready")
    (tmp_path / "gone").rename(tmp_path / "src")
    assert ensure_prepared("fashion-mnist", data_dir=tmp_path / "src", cache_dir=tmp_path / "ready")[0] == train
    assert read_meta(train)["count"] == 30


def write_image_tree(root: Path, rng, *, truncate: str | None = None) -> None:
    """imagefolder layout, 16x16 JPEGs: {train,test}/{a,b}/0..3.jpg; `truncate` names one file to cut short."""
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(4):
                path = root / split / cls / f"{i}.jpg"
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path, quality=95)
    if truncate:
        path = root / truncate
        path.write_bytes(path.read_bytes()[:-40])  # the header intact: it fails when decoded, not when listed


def test_a_bad_image_in_test_leaves_no_new_train_file(tmp_path):
    write_image_tree(tmp_path / "src", np.random.default_rng(6), truncate="test/b/2.jpg")
    with pytest.raises(UserError, match=r"test/b/2.jpg: cannot decode image"):
        prepare("imagefolder", tmp_path / "src", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # no train.beton, no staging folder, no folder it made
    # over an earlier good pair: that pair stays, byte for byte
    write_image_tree(tmp_path / "good", np.random.default_rng(7))
    pair = prepare("imagefolder", tmp_path / "good", tmp_path / "out", progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(UserError, match=r"test/b/2.jpg"):
        prepare("imagefolder", tmp_path / "src", tmp_path / "out", progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert len(before) == 4 and all(p.name in before for p in pair)


def test_out_that_is_a_file_is_refused(tmp_path):
    write_fashion(tmp_path / "src", np.random.default_rng(8))
    (tmp_path / "out").write_text("mine")
    with pytest.raises(UserError, match="exists and is not a folder"):
        prepare("fashion-mnist", tmp_path / "src", tmp_path / "out", progress=False)
    assert (tmp_path / "out").read_text() == "mine"
    with pytest.raises(UserError, match="cannot write"):  # a folder inside a file
        prepare("fashion-mnist", tmp_path / "src", tmp_path / "out" / "sub", progress=False)


def test_disk_full_is_one_error_and_leaves_nothing(tmp_path, full_disk):
    write_fashion(tmp_path / "src", np.random.default_rng(9))
    with pytest.raises(UserError, match="fashion-mnist-train.beton: cannot write: No space left on device"):
        prepare("fashion-mnist", tmp_path / "src", full_disk / "out", progress=False)
    assert list(full_disk.iterdir()) == []


def test_staging_left_by_a_killed_prepare_is_removed(tmp_path):
    import subprocess

    write_fashion(tmp_path / "src", np.random.default_rng(10))
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs
    stale = tmp_path / "out" / f".fashion-mnist.prepare.tmp{gone.pid}"
    (stale / "x").mkdir(parents=True)
    mine = tmp_path / "out" / f".fashion-mnist.prepare.tmp{os.getppid()}"  # a live process's: kept
    mine.mkdir()
    prepare("fashion-mnist", tmp_path / "src", tmp_path / "out", progress=False)
    assert not stale.exists() and mine.exists()
