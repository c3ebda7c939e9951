"""Every reader on small files the tests write in the real formats (pickle batches, MATLAB v5 via
scipy.io.savemat, PNG/JPEG trees, IDX gz), byte-exact against the arrays they were given; bad input
gives one line naming the file; a crafted pickle executes nothing."""

import codecs
import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fastvit.errors import UserError
from fastvit.loaders import load_arrays, prepare, read_meta
from fastvit.loaders.beton import iter_images
from fastvit.loaders.prepare import read_source
from fastvit.loaders.sources.cifar import load_pickle
from fastvit.loaders.sources.idx import read_idx


def _rgb(rng, n, h, w):
    return rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- CIFAR (pickle)


def _cifar_batch(path: Path, images: np.ndarray, labels, key: str, protocol: int, bytes_keys: bool):
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # (N, 3*32*32) RGB planes
    batch = {"batch_label": "test batch", key: list(map(int, labels)), "data": planes}
    if bytes_keys:  # what the original Python 2 files look like from Python 3
        batch = {k.encode(): v for k, v in batch.items()}
    blob = pickle.dumps(batch, protocol=protocol)
    if protocol == 2:  # the original files name numpy 1's module (GLOBAL is newline-terminated text)
        assert b"numpy._core.multiarray\n" in blob
        blob = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    path.write_bytes(blob)


def write_cifar10(root: Path, rng, n=6):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    train = _rgb(rng, 5 * n, 32, 32), rng.integers(0, 10, 5 * n)
    test = _rgb(rng, n, 32, 32), rng.integers(0, 10, n)
    for i in range(5):
        part = slice(i * n, (i + 1) * n)
        _cifar_batch(d / f"data_batch_{i + 1}", train[0][part], train[1][part], "labels", 2, True)
    _cifar_batch(d / "test_batch", *test, "labels", pickle.HIGHEST_PROTOCOL, False)
    names = [f"c{i}".encode() for i in range(10)]
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=2)
    return d, train, test


def test_cifar10_reader_and_prepare_are_exact(tmp_path):
    _, train, test = write_cifar10(tmp_path / "src", np.random.default_rng(0))
    source = read_source("cifar10", tmp_path / "src")
    np.testing.assert_array_equal(source.train.images, train[0])
    np.testing.assert_array_equal(source.train.labels, train[1])
    assert source.classes == [f"c{i}" for i in range(10)]
    paths = prepare("cifar10", tmp_path / "src", tmp_path / "out", progress=False)
    images, labels = load_arrays(paths[1])
    np.testing.assert_array_equal(images, test[0])
    np.testing.assert_array_equal(labels, test[1])
    assert read_meta(paths[0])["count"] == 30


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    sets = {}
    for name, n in (("train", 9), ("test", 4)):
        sets[name] = _rgb(rng, n, 32, 32), rng.integers(0, 100, n)
        _cifar_batch(d / name, *sets[name], "fine_labels", 2, True)
    with open(d / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}, f, protocol=2)
    source = read_source("cifar100", tmp_path)
    np.testing.assert_array_equal(source.test.images, sets["test"][0])
    np.testing.assert_array_equal(source.train.labels, sets["train"][1])
    assert source.classes[99] == "f99"


class _Evil:
    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("how", ["os.system", "exec", "nested", "codec"])
def test_malicious_cifar_pickle_is_refused_and_runs_nothing(tmp_path, how):
    write_cifar10(tmp_path / "src", np.random.default_rng(2))
    marker = tmp_path / "pwned"
    if how == "os.system":
        payload = _Evil(os.system, f"touch {marker}")
    elif how == "exec":
        payload = _Evil(exec, f"open({str(marker)!r}, 'w').close()")
    elif how == "nested":  # hidden inside an otherwise valid batch
        payload = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Evil(os.system, f"touch {marker}")]}
    else:  # the one allowed callable outside numpy, with an argument it must refuse
        payload = {b"data": _Evil(codecs.encode, "x", "rot13")}
    target = tmp_path / "src" / "cifar-10-batches-py" / "data_batch_3"
    target.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UserError, match=r"data_batch_3: unsafe pickle \((refusing to load|_codecs.encode with)"):
        prepare("cifar10", tmp_path / "src", tmp_path / "out", progress=False)
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.beton"))


def test_cifar_bad_input_one_line(tmp_path):
    d, _, _ = write_cifar10(tmp_path, np.random.default_rng(3))
    good = (d / "data_batch_2").read_bytes()
    (d / "data_batch_2").write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="data_batch_2: damaged or truncated pickle"):
        read_source("cifar10", tmp_path)
    _cifar_batch(d / "data_batch_2", _rgb(np.random.default_rng(0), 2, 32, 32), [3, 12], "labels", 2, True)
    with pytest.raises(UserError, match=r"data_batch_2: label 12 at index 1 is out of range \(expected 0..9\)"):
        read_source("cifar10", tmp_path)
    (d / "data_batch_2").write_bytes(good)
    (d / "data_batch_4").unlink()
    with pytest.raises(UserError, match="data_batch_4: missing"):
        read_source("cifar10", tmp_path)
    assert load_pickle(d / "batches.meta")["num_vis"] == 3072  # str keys for Python 2 pickles


# ---------------------------------------------------------------- SVHN (.mat v5)


def write_svhn(root: Path, rng, n_train=7, n_test=5):
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        images = _rgb(rng, n, 32, 32)
        digits = np.arange(n) % 10
        y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)  # 10 = digit 0
        scipy.io.savemat(root / f"{name}_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": y})
        out[name] = images, digits
    return out


def test_svhn_reader_exact_and_label_10_is_zero(tmp_path):
    sets = write_svhn(tmp_path, np.random.default_rng(4))
    source = read_source("svhn", tmp_path)
    np.testing.assert_array_equal(source.train.images, sets["train"][0])
    np.testing.assert_array_equal(source.train.labels, sets["train"][1])
    assert source.train.labels[0] == 0 and source.test.images.shape == (5, 32, 32, 3)


def test_svhn_bad_input_one_line(tmp_path):
    write_svhn(tmp_path, np.random.default_rng(5))
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"Z": np.zeros(3), "y": np.ones((3, 1))})
    with pytest.raises(UserError, match=r"test_32x32.mat: no variable 'X' \(variables: Z, y\)"):
        read_source("svhn", tmp_path)
    x = np.zeros((32, 32, 3, 2), np.uint8)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[3], [11]], np.uint8)})
    with pytest.raises(UserError, match=r"test_32x32.mat: label 11 at index 1 is out of range \(expected 1..10\)"):
        read_source("svhn", tmp_path)
    data = (tmp_path / "train_32x32.mat").read_bytes()
    (tmp_path / "train_32x32.mat").write_bytes(data[: len(data) - 500])
    with pytest.raises(UserError, match="train_32x32.mat: damaged or truncated"):
        read_source("svhn", tmp_path)


# ---------------------------------------------------------------- IDX (Fashion-MNIST)


def test_idx_reader_plain_and_gz(tmp_path):
    arr = np.random.default_rng(6).integers(0, 256, (3, 5, 4), dtype=np.uint8)
    header = bytes([0, 0, 8, 3]) + np.array(arr.shape, ">u4").tobytes()
    (tmp_path / "a-idx3-ubyte").write_bytes(header + arr.tobytes())
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(header + arr.tobytes()))
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), arr)
    blob = gzip.compress(header + arr.tobytes())
    (tmp_path / "cut.gz").write_bytes(blob[: len(blob) - 10])
    with pytest.raises(UserError, match="cut.gz: cannot decompress"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "short").write_bytes(header + arr.tobytes()[:-1])
    with pytest.raises(UserError, match=r"short: IDX header promises shape \[3, 5, 4\]"):
        read_idx(tmp_path / "short")


# ---------------------------------------------------------------- image trees


def _save(path: Path, array: np.ndarray, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(path, **kw)


def _decoded(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_cinic10_png_tree_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    expected = {"train": [], "test": []}
    for split in ("train", "valid", "test"):
        for c, name in enumerate(classes):
            for k in range(2 if split == "train" else 1):
                image = _rgb(rng, 1, 32, 32)[0]
                if split == "test" and c == 3:  # CINIC holds some greyscale PNGs
                    image = np.repeat(image[..., :1], 3, axis=-1)
                    _save(tmp_path / "CINIC-10" / split / name / f"{k}.png", image[..., :1])
                else:
                    _save(tmp_path / "CINIC-10" / split / name / f"{k}.png", image)
                if split in expected:
                    expected[split].append((image, c))
    paths = prepare("cinic10", tmp_path, tmp_path / "out", progress=False)
    for path, split in zip(paths, ("train", "test"), strict=True):
        images, labels = load_arrays(path)
        np.testing.assert_array_equal(images, np.stack([e[0] for e in expected[split]]))
        np.testing.assert_array_equal(labels, [e[1] for e in expected[split]])
    assert read_meta(paths[0])["classes"] == classes


def test_tiny_imagenet_layout(tmp_path):
    rng = np.random.default_rng(8)
    d = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]
    (d / "val" / "images").mkdir(parents=True)
    (d / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (d / "words.txt").write_text("n01\tgoldfish, Carassius\nn02\tcat\nn03\tdog, hound\nn99\tunused\n")
    for w in wnids:
        for k in range(2):
            image = _rgb(rng, 1, 64, 64)[0]
            if (w, k) == ("n01", 1):  # Tiny-ImageNet has greyscale JPEGs: stored as RGB
                image = image[..., :1]
            _save(d / "train" / w / "images" / f"{w}_{k}.JPEG", image, format="JPEG")
    rows = []
    for k, w in enumerate(["n03", "n02", "n03", "n01"]):
        _save(d / "val" / "images" / f"val_{k}.JPEG", _rgb(rng, 1, 64, 64)[0], format="JPEG")
        rows.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
    (d / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    source = read_source("tiny-imagenet", tmp_path)
    assert source.classes == ["cat", "goldfish", "dog"]  # wnids.txt order, names from words.txt
    np.testing.assert_array_equal(source.test.labels, [2, 0, 2, 1])
    paths = prepare("tiny-imagenet", tmp_path, tmp_path / "out", progress=False)
    images, labels = load_arrays(paths[1])
    assert read_meta(paths[1])["storage"] == "raw"
    np.testing.assert_array_equal(images, np.stack([_decoded(f) for f in source.test.files]))
    train_images, train_labels = load_arrays(paths[0])
    np.testing.assert_array_equal(train_images, np.stack([_decoded(f) for f in source.train.files]))
    np.testing.assert_array_equal(train_labels, [0, 0, 1, 1, 2, 2])
    grey = train_images[source.train.files.index(d / "train" / "n01" / "images" / "n01_1.JPEG")]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    (d / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn77\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match=r"val_annotations.txt:1: unknown class id 'n77'"):
        read_source("tiny-imagenet", tmp_path)


def test_imagefolder_small_raw_exact_and_bad_trees(tmp_path):
    rng = np.random.default_rng(9)
    root = tmp_path / "tree"
    want = []
    for c, name in enumerate(["ant", "bee"]):
        for k in range(3):
            image = _rgb(rng, 1, 12, 10)[0]
            _save(root / "train" / name / f"{k}.png", image)
            want.append((image, c))
    _save(root / "val" / "bee" / "0.png", _rgb(rng, 1, 12, 10)[0])
    paths = prepare("imagefolder", root, tmp_path / "out", progress=False)
    images, labels = load_arrays(paths[0])
    np.testing.assert_array_equal(images, np.stack([w[0] for w in want]))
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(load_arrays(paths[1])[1], [1])

    _save(root / "train" / "bee" / "9.png", _rgb(rng, 1, 12, 11)[0])
    with pytest.raises(UserError, match=r"bee/9.png: image is 11x12 .*mixed image sizes"):
        read_source("imagefolder", root)
    (root / "train" / "bee" / "9.png").unlink()
    (root / "train" / "cow").mkdir()
    with pytest.raises(UserError, match=r"train/cow: empty class"):
        read_source("imagefolder", root)
    (root / "train" / "cow").rmdir()
    _save(root / "val" / "eel" / "0.png", _rgb(rng, 1, 12, 10)[0])
    with pytest.raises(UserError, match=r"val/eel: class 'eel' is not among the training classes"):
        read_source("imagefolder", root)


# ---------------------------------------------------------------- fine-grained (JPEG storage)


def test_aircraft_lists_banner_crop_and_jpeg(tmp_path):
    rng = np.random.default_rng(10)
    d = tmp_path / "fgvc-aircraft-2013b" / "data"
    (d / "images").mkdir(parents=True)
    (d / "variants.txt").write_text("707-320\nA300B4\nF/A-18\n")
    lists = {"trainval": [("0001", "F/A-18"), ("0002", "707-320")], "test": [("0003", "A300B4")]}
    for split, rows in lists.items():
        (d / f"images_variant_{split}.txt").write_text("".join(f"{i} {v}\n" for i, v in rows))
        for image_id, _ in rows:
            image = np.full((100, 90, 3), 120, np.uint8) + rng.integers(0, 3, (100, 90, 3), dtype=np.uint8)
            image[-20:] = 255  # the banner
            _save(d / "images" / f"{image_id}.jpg", image, quality=95)
    source = read_source("aircraft", tmp_path)
    assert source.classes == ["707-320", "A300B4", "F/A-18"]
    np.testing.assert_array_equal(source.train.labels, [2, 0])
    paths = prepare("aircraft", tmp_path, tmp_path / "out", progress=False, jpeg_quality=92)
    meta = read_meta(paths[0])
    assert meta["storage"] == "jpeg" and meta["jpeg_quality"] == 92 and (meta["height"], meta["width"]) == (80, 90)
    for image, _ in iter_images(paths[0]):
        assert image.shape == (80, 90, 3) and image.max() < 200  # banner gone
    (d / "images_variant_test.txt").write_text("0003 B-52\n")
    with pytest.raises(UserError, match=r"images_variant_test.txt:1: unknown variant 'B-52'"):
        read_source("aircraft", tmp_path)


def _cars_annos(path: Path, rows):
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    ann = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, (fname, cls) in enumerate(rows):
        box = [np.array([[v]], np.uint16) for v in (1, 2, 30, 20)]
        ann[0, i] = (*box, np.array([[cls]], np.uint8), np.array([fname]))
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"annotations": ann})


def test_cars_devkit_labels(tmp_path):
    rng = np.random.default_rng(11)
    train_rows, test_rows = [("00001.jpg", 196), ("00002.jpg", 1)], [("00001.jpg", 5)]
    for folder, rows in (("cars_train", train_rows), ("cars_test", test_rows)):
        for fname, _ in rows:
            _save(tmp_path / folder / fname, _rgb(rng, 1, 40, 70)[0], quality=90)
    _cars_annos(tmp_path / "devkit" / "cars_train_annos.mat", train_rows)
    _cars_annos(tmp_path / "cars_test_annos_withlabels.mat", test_rows)
    names = np.empty((1, 196), dtype=object)
    for i in range(196):
        names[0, i] = np.array([f"Model {i + 1}"])
    scipy.io.savemat(tmp_path / "devkit" / "cars_meta.mat", {"class_names": names})
    source = read_source("cars", tmp_path)
    np.testing.assert_array_equal(source.train.labels, [195, 0])
    np.testing.assert_array_equal(source.test.labels, [4])
    assert source.classes[0] == "Model 1" and source.classes[195] == "Model 196"
    assert source.train.files[0] == tmp_path / "cars_train" / "00001.jpg"
    _cars_annos(tmp_path / "cars_test_annos_withlabels.mat", [("00001.jpg", 197)])
    with pytest.raises(UserError, match=r"cars_test_annos_withlabels.mat: label 196 .*out of range"):
        read_source("cars", tmp_path)


def test_flowers102_split_ids(tmp_path):
    rng = np.random.default_rng(12)
    labels = np.array([[1, 102, 7, 7, 3]], np.uint8)
    for i in range(1, 6):
        _save(tmp_path / "jpg" / f"image_{i:05d}.jpg", _rgb(rng, 1, 70, 80)[0])
    scipy.io.savemat(tmp_path / "imagelabels.mat", {"labels": labels})
    scipy.io.savemat(tmp_path / "setid.mat", {"trnid": [[2, 4]], "valid": [[1]], "tstid": [[3, 5]]})
    source = read_source("flowers102", tmp_path)
    np.testing.assert_array_equal(source.train.labels, [101, 6, 0])
    np.testing.assert_array_equal(source.test.labels, [6, 2])
    assert [f.name for f in source.test.files] == ["image_00003.jpg", "image_00005.jpg"]
    scipy.io.savemat(tmp_path / "setid.mat", {"trnid": [[9]], "valid": [[1]], "tstid": [[3]]})
    with pytest.raises(UserError, match=r"setid.mat: image id 9 is outside 1..5"):
        read_source("flowers102", tmp_path)
