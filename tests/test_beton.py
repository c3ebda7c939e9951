"""The .beton writer/reader: byte-exact raw round trip, agreement with FFCV's own reader, sidecar
statistics against a float64 reference, JPEG storage, and atomicity when a write fails."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from fastvit.errors import UserError
from fastvit.loaders import beton, info, load_arrays, read_meta
from fastvit.loaders.sources.common import Split

CLASSES = ["a", "b", "c", "d", "e"]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Importing ffcv and building its Loader set torch's thread count to 1: undo for later tests."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _random_split(rng, n, h, w, c):
    images = rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
    labels = rng.integers(0, len(CLASSES), size=n).astype(np.int64)
    return Split(labels=labels, images=images)


def _write(path, split, **kw):
    return beton.write_split(path, split, dataset="toy", split_name="train", classes=CLASSES, progress=False, **kw)


@pytest.mark.parametrize("shape,workers", [((5, 7, 1), 1), ((64, 64, 3), 2)])
def test_raw_round_trip_is_byte_exact(tmp_path, shape, workers):
    rng = np.random.default_rng(0)
    n = 700 if shape[0] == 64 else 53  # 700 x 12 KiB spans several 2 MiB pages, shared by 2 writers
    split = _random_split(rng, n, *shape)
    path = tmp_path / "toy-train.beton"
    meta = _write(path, split, num_workers=workers)
    images, labels = load_arrays(path)
    assert images.dtype == np.uint8 and labels.dtype == np.int64
    assert images.shape == (n, *shape)
    np.testing.assert_array_equal(images, split.images)
    np.testing.assert_array_equal(labels, split.labels)
    assert meta["storage"] == "raw" and meta["count"] == n
    assert (meta["height"], meta["width"], meta["channels"]) == shape
    assert read_meta(path) == meta
    # chunked reading agrees with the whole-file read
    chunks = list(beton.iter_batches(path, batch_size=17))
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), split.images)


def test_sidecar_stats_match_float64_reference(tmp_path):
    rng = np.random.default_rng(1)
    split = _random_split(rng, 40, 6, 5, 3)
    split.images[..., 1] //= 3  # channels with different statistics
    meta = _write(tmp_path / "s.beton", split)
    ref = split.images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(meta["mean"], ref.mean(0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(meta["std"], ref.std(0), rtol=0, atol=1e-9)
    assert meta["class_counts"] == np.bincount(split.labels, minlength=5).tolist()
    assert meta["classes"] == CLASSES and meta["num_classes"] == 5
    assert meta["format_version"] == beton.FORMAT_VERSION


def test_parser_agrees_with_ffcv_reader(tmp_path):
    """Our numpy parse of the layout must see what FFCV's Reader sees, field by field."""
    from ffcv.reader import Reader

    rng = np.random.default_rng(2)
    split = _random_split(rng, 300, 32, 32, 3)
    path = tmp_path / "p.beton"
    _write(path, split, num_workers=2)
    ours = beton.open_beton(path)
    theirs = Reader(str(path))
    assert ours.shape == tuple(theirs.handlers["image"].shape)
    np.testing.assert_array_equal(ours.image_meta, theirs.metadata["f0"])
    np.testing.assert_array_equal(ours.labels, theirs.metadata["f1"])
    sizes = dict(zip(theirs.alloc_table["ptr"].tolist(), theirs.alloc_table["size"].tolist(), strict=True))
    assert ours.blob_sizes == sizes
    # the bytes FFCV's allocation table points at are the images we return
    raw = np.fromfile(path, dtype=np.uint8)
    images, _ = load_arrays(path)
    for i in (0, 150, 299):
        ptr = int(theirs.metadata["f0"][i])
        np.testing.assert_array_equal(raw[ptr : ptr + sizes[ptr]], images[i].reshape(-1))


def _write_pngs(directory, arrays):
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i, a in enumerate(arrays):
        files.append(directory / f"{i:03d}.png")
        Image.fromarray(a).save(files[-1])
    return files


def test_jpeg_storage_for_large_variable_images(tmp_path):
    rng = np.random.default_rng(3)
    sizes = [(80, 100), (120, 90), (70, 70)]
    # smooth images so JPEG error is small and meaningful to bound
    arrays = []
    for h, w in sizes:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 2, yy * 2, (xx + yy)], -1) + rng.integers(0, 8, size=(h, w, 3))
        arrays.append(np.clip(base, 0, 255).astype(np.uint8))
    files = _write_pngs(tmp_path / "img", arrays)
    split = Split(labels=np.array([0, 1, 2]), files=files)
    path = tmp_path / "j.beton"
    meta = _write(path, split, jpeg_quality=95, short_side=256)
    assert meta["storage"] == "jpeg" and meta["variable_size"] and meta["jpeg_quality"] == 95
    assert (meta["height"], meta["width"]) == (120, 100)
    got = list(beton.iter_images(path))
    for (image, label), original, want_label in zip(got, arrays, [0, 1, 2], strict=True):
        assert image.shape == original.shape and label == want_label
        assert np.abs(image.astype(int) - original).mean() < 3.0
    with pytest.raises(UserError, match="different sizes"):
        load_arrays(path)
    text = info(path)
    assert "up to 120x100x3 (sizes vary)" in text and "jpeg (quality 95)" in text and "samples   3" in text


def test_jpeg_short_side_resize_and_bottom_crop(tmp_path):
    arrays = [np.full((150, 300, 3), 200, np.uint8)]
    arrays[0][-20:] = 0  # a dark banner that the crop must remove
    split = Split(labels=np.array([1]), files=_write_pngs(tmp_path / "img", arrays), crop_bottom=20)
    path = tmp_path / "c.beton"
    _write(path, split, short_side=65)
    (image, _), = beton.iter_images(path)
    assert image.shape == (65, 150, 3)  # 130x300 after the crop, shorter side 130 -> 65
    assert image.min() > 150  # no banner pixels left


def test_failed_write_leaves_previous_pair_and_no_temp_files(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "toy-train.beton"
    good = _random_split(rng, 20, 4, 4, 3)
    _write(path, good)
    files = _write_pngs(tmp_path / "img", [rng.integers(0, 255, (4, 4, 3), dtype=np.uint8) for _ in range(30)])
    files[17].write_bytes(b"not an image at all")  # the writer fails in the middle
    bad = Split(labels=np.zeros(30, np.int64), files=files, size=(4, 4))
    with pytest.raises(UserError, match="017.png"):
        _write(path, bad, num_workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "toy-train.beton", "toy-train.beton.json"]
    assert beton.is_valid(path)
    np.testing.assert_array_equal(load_arrays(path)[0], good.images)


def test_crash_between_renames_leaves_nothing_valid(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    path = tmp_path / "toy-train.beton"
    _write(path, _random_split(rng, 10, 4, 4, 3))
    real_replace = os.replace
    calls = []

    def replace_then_die(a, b):
        calls.append(b)
        if len(calls) == 2:  # the .beton is in place, the sidecar not yet
            raise KeyboardInterrupt
        real_replace(a, b)

    monkeypatch.setattr(beton.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        _write(path, _random_split(rng, 12, 4, 4, 3))
    monkeypatch.undo()
    assert not beton.is_valid(path)
    assert not any(".tmp" in p.name for p in tmp_path.iterdir())
    with pytest.raises(UserError, match="missing"):
        read_meta(path)


def test_mixed_sizes_in_raw_split_fail_naming_the_file(tmp_path):
    rng = np.random.default_rng(6)
    arrays = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(5)]
    arrays[3] = rng.integers(0, 255, (8, 9, 3), dtype=np.uint8)
    split = Split(labels=np.zeros(5, np.int64), files=_write_pngs(tmp_path / "img", arrays), size=(8, 8))
    with pytest.raises(UserError, match=r"003.png.*mixed image sizes"):
        _write(tmp_path / "m.beton", split)
    assert not list(tmp_path.glob("m.beton*"))


def test_damaged_files_are_refused_in_one_line(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "t.beton"
    _write(path, _random_split(rng, 200, 16, 16, 3))
    size = path.stat().st_size
    truncated = tmp_path / "cut.beton"
    truncated.write_bytes(path.read_bytes()[: size // 3])
    (tmp_path / "cut.beton.json").write_text((tmp_path / "t.beton.json").read_text())
    with pytest.raises(UserError, match="cut.beton.*truncated"):
        load_arrays(truncated)
    assert not beton.is_valid(truncated)
    junk = tmp_path / "junk.beton"
    junk.write_bytes(b"\x07" * 5000)
    with pytest.raises(UserError, match="junk.beton: not a fastvit .beton"):
        load_arrays(junk)
    with pytest.raises(UserError, match="missing"):
        load_arrays(tmp_path / "nope.beton")
    side = json.loads((tmp_path / "t.beton.json").read_text())
    side["format_version"] = 0
    (tmp_path / "t.beton.json").write_text(json.dumps(side))
    with pytest.raises(UserError, match="format_version"):
        read_meta(path)
    assert not beton.is_valid(path)


def test_interrupt_while_workers_write_leaves_no_file(tmp_path, monkeypatch):
    """Ctrl-C in the parent while FFCV's writer processes run: workers stopped, temp files gone."""
    import multiprocessing

    rng = np.random.default_rng(8)
    split = _random_split(rng, 6000, 32, 32, 3)
    real_sleep = beton.time.sleep
    polls = []

    def sleep_then_interrupt(seconds):
        polls.append(seconds)
        if len(polls) == 1:  # the first progress poll: an idle machine writes 3,000 images in under 3 polls
            polls.append(sorted(p.name for p in tmp_path.iterdir()))  # what existed mid-write
            raise KeyboardInterrupt
        real_sleep(seconds)

    monkeypatch.setattr(beton.time, "sleep", sleep_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "k.beton", split, num_workers=2)
    monkeypatch.undo()
    assert polls[-1] == [f"k.beton.tmp{os.getpid()}"]  # interrupted with a partial file on disk
    assert list(tmp_path.iterdir()) == []
    assert multiprocessing.active_children() == []


def test_ffcv_loader_decodes_our_files_to_the_same_arrays(tmp_path):
    """The FFCV pipeline (pipeline.py's loader) and load_arrays see identical pixels and labels."""
    from ffcv.fields.decoders import IntDecoder, NDArrayDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    rng = np.random.default_rng(9)
    raw = _random_split(rng, 50, 8, 6, 3)
    yy, xx = np.mgrid[0:70, 0:90]
    smooth = [np.stack([xx + k, yy, xx + yy], -1).astype(np.uint8) for k in range(6)]
    jpeg = Split(labels=np.arange(6) % 5, files=_write_pngs(tmp_path / "img", smooth))
    for name, split, decoder in (("raw", raw, NDArrayDecoder()), ("jpeg", jpeg, SimpleRGBImageDecoder())):
        path = tmp_path / f"{name}.beton"
        _write(path, split)
        loader = Loader(str(path), batch_size=64, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                        pipelines={"image": [decoder], "label": [IntDecoder()]})  # fmt: skip
        (images, labels), = list(loader)
        want_images, want_labels = load_arrays(path)
        np.testing.assert_array_equal(np.asarray(images), want_images)
        np.testing.assert_array_equal(np.asarray(labels).reshape(-1), want_labels)


def test_large_jpeg_reduced_decode_keeps_size_and_removes_banner(tmp_path):
    """JPEG sources are decoded at a reduced scale when large: the result matches full decoding."""
    from fastvit.loaders.sources.images import load_image

    yy, xx = np.mgrid[0:613, 0:997]
    image = np.stack([xx % 200 + 20, yy % 180 + 30, (xx + yy) % 150 + 40], -1).astype(np.uint8)
    image[-20:] = 255  # banner, its edge not on an 8-px block boundary (613 - 20 = 593)
    path = tmp_path / "big.jpg"
    Image.fromarray(image).save(path, quality=95)
    reduced = load_image(path, crop_bottom=20, short_side=128)
    with Image.open(path) as im:  # reference: full decode, crop, bicubic resize
        full = im.convert("RGB").crop((0, 0, 997, 593))
        ref = np.asarray(full.resize((round(997 * 128 / 593), 128), Image.Resampling.BICUBIC))
    # the reduced path cuts one spare row (at 1/4 scale) under the banner: a slightly wider result
    assert reduced.shape[0] == ref.shape[0] == 128 and 215 <= reduced.shape[1] <= 219
    assert reduced.max() < 250  # no banner rows survive
    same_grid = np.asarray(Image.fromarray(reduced).resize(ref.shape[1::-1], Image.Resampling.BICUBIC))
    assert np.abs(same_grid[:64].astype(int) - ref[:64]).mean() < 4.0  # top half: rows map within 0.5 px


def test_corrupted_headers_never_crash_differently(tmp_path):
    """Random byte damage in the header, field descriptors and sample records: load_arrays either
    raises a one-line UserError or returns arrays of the declared shape, never another exception."""
    rng = np.random.default_rng(10)
    good = tmp_path / "g.beton"
    _write(good, _random_split(rng, 40, 5, 4, 3))
    blob = good.read_bytes()
    records_end = 24 + 2 * 1041 + 40 * 16  # header, 2 aligned descriptors, 40 (ptr, label) records
    bad = tmp_path / "bad.beton"
    beton.sidecar_path(bad).write_text(beton.sidecar_path(good).read_text())
    outcomes = {"error": 0, "read": 0}
    for _ in range(300):
        damaged = bytearray(blob)
        for pos in rng.integers(0, records_end, size=rng.integers(1, 4)):
            damaged[pos] = int(rng.integers(0, 256))
        bad.write_bytes(bytes(damaged))
        try:
            images, labels = load_arrays(bad)
        except UserError as e:
            assert "\n" not in str(e) and str(bad) in str(e)
            outcomes["error"] += 1
        else:
            assert images.dtype == np.uint8 and labels.dtype == np.int64 and len(images) == len(labels)
            outcomes["read"] += 1
    assert outcomes["error"] > 0 and outcomes["read"] > 0


# ---------------------------------------------------------------- the file against its sidecar

TEN = [str(c) for c in range(10)]
DESC0 = beton._HEADER.itemsize  # the image field's descriptor
RECORDS = DESC0 + 2 * beton._FIELD_DESC.itemsize  # one (image ptr u64, label i64) record per sample


def _ten_class_file(tmp_path, n=20):
    rng = np.random.default_rng(11)
    split = Split(labels=(np.arange(n) % 10).astype(np.int64), images=rng.integers(0, 256, (n, 6, 5, 1), np.uint8))
    path = tmp_path / "ten-train.beton"
    beton.write_split(path, split, dataset="toy", split_name="train", classes=TEN, progress=False)
    return path


def _poke(path, offset, value):
    data = bytearray(path.read_bytes())
    data[offset] = value
    path.write_bytes(bytes(data))


def test_label_outside_the_sidecars_classes_is_one_clear_error(tmp_path):
    path = _ten_class_file(tmp_path)
    _poke(path, RECORDS + 16 * 7 + 8, 200)  # sample 7's label byte: 7 -> 200
    for read in (load_arrays, read_meta, info):
        with pytest.raises(UserError, match=r"ten-train.beton: sample 7 has label 200, outside 0..9") as e:
            read(path)
        assert "\n" not in str(e.value)
    assert not beton.is_valid(path)


def test_a_label_moved_within_range_breaks_the_class_counts(tmp_path):
    path = _ten_class_file(tmp_path)
    _poke(path, RECORDS + 16 * 7 + 8, 3)  # 7 -> 3: in range, but class 7 now has one sample too few
    with pytest.raises(UserError, match="per-class label counts differ"):
        load_arrays(path)


@pytest.mark.parametrize("dim,value,shown", [(0, 3, "3x5x1"), (1, 6, "6x6x1"), (2, 3, "6x5x3")])
def test_image_shape_not_the_sidecars_is_refused(tmp_path, dim, value, shown):
    path = _ten_class_file(tmp_path)
    assert beton.open_beton(path).shape == (6, 5, 1)
    _poke(path, DESC0 + 17 + 8 * dim, value)  # type id, 16-byte name, then 32 uint64 dims
    assert beton.open_beton(path).shape[dim] == value  # the file now claims another shape
    for read in (load_arrays, info):
        with pytest.raises(UserError, match=rf"images are {shown} \(H x W x C\), its sidecar says 6x5x1"):
            read(path)


def test_sample_count_and_size_are_checked(tmp_path):
    path = _ten_class_file(tmp_path)
    side = beton.sidecar_path(path)
    good = json.loads(side.read_text())
    side.write_text(json.dumps({**good, "count": 21}))
    with pytest.raises(UserError, match="20 samples, its sidecar says 21"):
        read_meta(path)
    side.write_text(json.dumps({**good, "file_bytes": good["file_bytes"] + 1}))
    with pytest.raises(UserError, match="truncated or replaced"):
        read_meta(path)
    side.write_text(json.dumps({k: v for k, v in good.items() if k != "num_classes"}))
    with pytest.raises(UserError, match="lacks or mangles 'num_classes'"):
        read_meta(path)


def test_info_of_a_file_that_is_not_a_beton(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a dataset\n" * 400)
    with pytest.raises(UserError, match=r"notes.txt: not a fastvit .beton"):
        info(text)
    picture = tmp_path / "picture.png"
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(picture)
    with pytest.raises(UserError, match=r"picture.png: not a fastvit .beton"):
        info(picture)
    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(b"0123456789")
    with pytest.raises(UserError, match=r"tiny.bin: too short to be an FFCV .beton \(10 bytes\)"):
        info(tiny)
