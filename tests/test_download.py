"""Downloads against a local HTTP server (127.0.0.1, a thread, stopped after each test): checksum
mismatch refused, resume after a truncated partial file, atomic final file; archive extraction
refuses path traversal and writes nothing outside the target."""

import hashlib
import io
import pickle
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from fastvit.errors import UserError
from fastvit.loaders import download as dl
from fastvit.loaders import load_arrays, prepare


class _Server:
    """Serves `files` {name: bytes} with Range support; `cut_after` {name: n} drops the connection
    after n bytes of the next response for that name; `ranges` can be switched off."""

    def __init__(self, files):
        self.files, self.cut_after, self.ranges, self.log = dict(files), {}, True, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.log.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                data, start = server.files[name], 0
                asked = self.headers.get("Range")
                if asked and server.ranges:
                    start = int(asked.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.cut_after.pop(name, None)
                self.wfile.write(body if cut is None else body[:cut])
                if cut is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 5
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.deadline = threading.Timer(120, self.httpd.shutdown)  # bounded even if a test hangs
        self.deadline.daemon = True

    def url(self, name):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"


@pytest.fixture
def server():
    created = []

    def start(files):
        s = _Server(files)
        s.thread.start()
        s.deadline.start()
        created.append(s)
        return s

    yield start
    for s in created:
        s.deadline.cancel()
        s.httpd.shutdown()
        s.httpd.server_close()
        s.thread.join(timeout=5)


PAYLOAD = np.random.default_rng(0).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_download_verifies_and_is_atomic(tmp_path, server):
    s = server({"data.bin": PAYLOAD})
    out = dl.fetch(s.url("data.bin"), tmp_path / "data.bin", checksum=MD5, progress=False, timeout=10)
    assert out.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]
    # a second call reuses the verified file without a request
    dl.fetch(s.url("data.bin"), tmp_path / "data.bin", checksum=MD5, progress=False, timeout=10)
    assert len(s.log) == 1


def test_checksum_mismatch_is_refused_and_nothing_kept(tmp_path, server):
    s = server({"data.bin": PAYLOAD})
    with pytest.raises(UserError, match=r"data.bin: checksum mismatch \(md5 [0-9a-f]{32}, expected 0{32}\); the d"):
        dl.fetch(s.url("data.bin"), tmp_path / "data.bin", checksum="0" * 32, progress=False, timeout=10)
    assert list(tmp_path.iterdir()) == []
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    bad = sha[:-1] + ("0" if sha[-1] != "0" else "1")
    with pytest.raises(UserError, match="sha256"):
        dl.fetch(s.url("data.bin"), tmp_path / "data.bin", checksum=bad, progress=False, timeout=10)
    assert dl.fetch(s.url("data.bin"), tmp_path / "data.bin", checksum=sha, progress=False, timeout=10).is_file()


def test_resume_after_truncated_partial_file(tmp_path, server):
    s = server({"data.bin": PAYLOAD})
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:1_234_567])  # left by an earlier, cut-off run
    dl.fetch(s.url("data.bin"), tmp_path / "data.bin", checksum=MD5, progress=False, timeout=10)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
    assert s.log == [("data.bin", "bytes=1234567-")]
    assert not (tmp_path / "data.bin.part").exists()


def test_dropped_connection_keeps_part_then_resumes(tmp_path, server):
    s = server({"data.bin": PAYLOAD})
    s.cut_after["data.bin"] = 1_000_000
    with pytest.raises(UserError, match="interrupted at 1000000 .*run again to resume"):
        dl.fetch(s.url("data.bin"), tmp_path / "data.bin", checksum=MD5, progress=False, timeout=5)
    assert not (tmp_path / "data.bin").exists()  # nothing that looks complete
    assert (tmp_path / "data.bin.part").stat().st_size == 1_000_000
    dl.fetch(s.url("data.bin"), tmp_path / "data.bin", checksum=MD5, progress=False, timeout=10)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
    assert s.log[-1] == ("data.bin", "bytes=1000000-")


def test_server_without_ranges_restarts_from_zero(tmp_path, server):
    s = server({"data.bin": PAYLOAD})
    s.ranges = False
    (tmp_path / "data.bin.part").write_bytes(b"stale bytes from another file")
    dl.fetch(s.url("data.bin"), tmp_path / "data.bin", checksum=MD5, progress=False, timeout=10)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_unknown_checksum_is_recorded_printed_and_enforced(tmp_path, server, capsys):
    s = server({"data.bin": PAYLOAD})
    dl.fetch(s.url("data.bin"), tmp_path / "data.bin", progress=False, timeout=10)
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    assert sha in capsys.readouterr().err
    assert (tmp_path / "SHA256SUMS").read_text() == f"{sha}  data.bin\n"
    (tmp_path / "data.bin").write_bytes(PAYLOAD[:-1] + b"\0")  # later corruption is caught
    with pytest.raises(UserError, match="data.bin: checksum mismatch .*delete it to download it again"):
        dl.fetch(s.url("data.bin"), tmp_path / "data.bin", progress=False, timeout=10)


def test_http_errors_and_schemes_are_one_line(tmp_path, server):
    s = server({})
    with pytest.raises(UserError, match="HTTP 404"):
        dl.fetch(s.url("nope.bin"), tmp_path / "nope.bin", progress=False, timeout=10)
    with pytest.raises(UserError, match="only http"):
        dl.fetch("file:///etc/passwd", tmp_path / "passwd", progress=False, timeout=10)
    with pytest.raises(UserError, match="no download for cars"):
        dl.download("cars", tmp_path)


# ---------------------------------------------------------------- archives


def _tar(members: dict, links: dict | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize(
    "members,links",
    [
        ({"ok/a.txt": b"a", "../evil.txt": b"x"}, None),
        ({"ok/../../evil.txt": b"x"}, None),
        ({"/tmp/evil.txt": b"x"}, None),
        ({"ok/a.txt": b"a"}, {"ok/link": "../../"}),
    ],
)
def test_tar_with_traversal_is_refused_and_writes_nothing(tmp_path, members, links):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(_tar(members, links))
    target = tmp_path / "out" / "inner"
    with pytest.raises(UserError, match=r"bad.tar.gz: refusing .*member"):
        dl.extract(archive, target)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert list(target.iterdir()) == []  # staging removed, nothing extracted


def test_zip_with_traversal_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("good.txt", b"g")
        z.writestr("../evil.txt", b"x")
    (tmp_path / "bad.zip").write_bytes(buf.getvalue())
    with pytest.raises(UserError, match=r"bad.zip: refusing member '../evil.txt'"):
        dl.extract(tmp_path / "bad.zip", tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and list((tmp_path / "out").iterdir()) == []


def test_truncated_archive_is_one_line_and_leaves_nothing(tmp_path):
    blob = _tar({"d/a.bin": bytes(200_000), "d/b.bin": bytes(range(256)) * 400})
    (tmp_path / "cut.tar.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="cut.tar.gz: damaged or truncated archive"):
        dl.extract(tmp_path / "cut.tar.gz", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def _cifar_archive(rng) -> bytes:
    """cifar-10-python.tar.gz in miniature: 4 images per batch."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            images = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
            blob = pickle.dumps({b"data": images, b"labels": [1, 2, 3, 4]}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def test_prepare_from_an_archive_as_src(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(_cifar_archive(np.random.default_rng(2)))
    train, _ = prepare("cifar10", tmp_path / "cifar-10-python.tar.gz", tmp_path / "out", progress=False)
    assert load_arrays(train)[0].shape == (20, 32, 32, 3)
    extracted = tmp_path / "out" / "downloads" / "cifar10" / "cifar-10-batches-py"
    stamp = extracted.stat().st_mtime_ns
    prepare("cifar10", tmp_path / "cifar-10-python.tar.gz", tmp_path / "out", progress=False)
    assert extracted.stat().st_mtime_ns == stamp  # extracted once
    (tmp_path / "notes.txt").write_text("not an archive")
    with pytest.raises(UserError, match="notes.txt: not a directory, nor a tar or zip archive"):
        prepare("cifar10", tmp_path / "notes.txt", tmp_path / "out", progress=False)


def test_prepare_download_end_to_end(tmp_path, server, monkeypatch):
    """`prepare --download` for CIFAR-10 from a local server: fetch, verify, extract, read, write."""
    archive = _cifar_archive(np.random.default_rng(1))
    s = server({"cifar-10-python.tar.gz": archive})
    resource = dl.Resource(s.url("cifar-10-python.tar.gz"), hashlib.md5(archive).hexdigest(), True)
    monkeypatch.setitem(dl.RESOURCES, "cifar10", (resource,))
    train, test = prepare("cifar10", None, tmp_path / "out", download=True, progress=False)
    assert (tmp_path / "out" / "downloads" / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()
    images, labels = load_arrays(test)
    assert images.shape == (4, 32, 32, 3) and labels.tolist() == [1, 2, 3, 4]
    assert load_arrays(train)[0].shape == (20, 32, 32, 3)
