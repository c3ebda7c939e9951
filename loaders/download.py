"""`fastvit data prepare DATASET --download`: fetch the official files, verify, extract safely.

- Resumable: a download goes to `NAME.part`; a later run asks the server for the rest (HTTP Range)
  and starts over only if the server ignores the range.
- Atomic: `NAME` appears (by rename) only once complete and verified.
- Verified: against the checksum written below where it is known for sure (md5 of the published
  files, as torchvision and the dataset pages list them), else against one the user passes; with
  neither, the sha256 is recorded in `SHA256SUMS` next to the file, printed, and checked on reuse.
- Safe extraction: every tar/zip member must land inside the destination (no absolute paths, no
  `..`, no links or device files); extraction goes to a staging directory renamed into place.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fastvit.errors import UserError

CHUNK = 1 << 20
SUMS_FILE = "SHA256SUMS"


@dataclass(frozen=True)
class Resource:
    url: str
    md5: str | None = None  # of the published file; None where not known for sure
    extract: bool = False

    @property
    def filename(self) -> str:
        return PurePosixPath(urllib.parse.urlparse(self.url).path).name


_TORONTO = "https://www.cs.toronto.edu/~kriz/"
_SVHN = "http://ufldl.stanford.edu/housenumbers/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FLOWERS = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"

RESOURCES: dict[str, tuple[Resource, ...]] = {
    "cifar10": (Resource(_TORONTO + "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", True),),
    "cifar100": (Resource(_TORONTO + "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", True),),
    "svhn": (
        Resource(_SVHN + "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
        Resource(_SVHN + "test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    ),
    "fashion-mnist": (
        Resource(_FASHION + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        Resource(_FASHION + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        Resource(_FASHION + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        Resource(_FASHION + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ),
    "tiny-imagenet": (
        Resource("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de", True),
    ),
    "cinic10": (Resource("https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz", None, True),),
    "aircraft": (
        Resource(
            "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz", None, True
        ),
    ),
    "flowers102": (
        Resource(_FLOWERS + "102flowers.tgz", "52808999861908f626f3c1f4e79d11fa", True),
        Resource(_FLOWERS + "imagelabels.mat", "e0620be6f572b9609742df49c70aed4d"),
        Resource(_FLOWERS + "setid.mat", "a5357ecc9cb78c4bef273ce3793fc85c"),
    ),
}
_NO_DOWNLOAD = {
    "cars": "Stanford Cars is no longer served at its official address; get cars_train/, cars_test/, "
    "devkit/ and cars_test_annos_withlabels.mat elsewhere and pass --src DIR",
    "imagefolder": "imagefolder is your own tree; pass --src DIR",
}


# ---------------------------------------------------------------- checksums


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _algorithm(hexdigest: str) -> str:
    lengths = {32: "md5", 64: "sha256"}
    if len(hexdigest) not in lengths or any(c not in "0123456789abcdef" for c in hexdigest.lower()):
        raise UserError(f"checksum {hexdigest!r} is neither an md5 (32 hex digits) nor a sha256 (64)")
    return lengths[len(hexdigest)]


def _verify(path: Path, expected: str, shown_name: str, consequence: str) -> None:
    got = file_digest(path, _algorithm(expected))
    if got != expected.lower():
        raise UserError(
            f"{shown_name}: checksum mismatch ({_algorithm(expected)} {got}, expected {expected.lower()}); "
            + consequence
        )


def _recorded(directory: Path) -> dict[str, str]:
    sums = directory / SUMS_FILE
    if not sums.is_file():
        return {}
    pairs = (line.split(None, 1) for line in sums.read_text().splitlines() if line.strip())
    return {name.strip(): digest for digest, name in pairs}


def _record(directory: Path, name: str, digest: str) -> None:
    sums = _recorded(directory)
    sums[name] = digest
    tmp = directory / f".{SUMS_FILE}.tmp{os.getpid()}"
    tmp.write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))
    os.replace(tmp, directory / SUMS_FILE)


# ---------------------------------------------------------------- fetching


def fetch(url: str, dest: Path, *, checksum: str | None = None, progress: bool = True, timeout: float = 60) -> Path:
    """Download `url` to `dest` (resuming `dest.part`), verify `checksum` (md5 or sha256 hex), rename.

    With no checksum, the sha256 is recorded in dest's directory (SHA256SUMS), printed, and used
    to verify the file on later runs."""
    from tqdm import tqdm

    dest = Path(dest)
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise UserError(f"{url}: only http(s) downloads are supported")
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = checksum or _recorded(dest.parent).get(dest.name)
    if dest.is_file():
        if expected:
            _verify(dest, expected, str(dest), "delete it to download it again")
        return dest
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "fastvit"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not offset:  # 416: nothing left to send, the part file is complete
            raise UserError(f"{url}: HTTP {e.code} {e.reason}") from None
        response = None
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"{url}: cannot connect ({getattr(e, 'reason', e)})") from None
    if response is not None:
        with response:
            resumed = response.status == 206 and response.headers.get("Content-Range", "").startswith(
                f"bytes {offset}-"
            )
            if not resumed:
                offset = 0  # the server sent the whole file
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name, disable=not progress)
            try:
                with open(part, "ab" if resumed else "wb") as f:
                    while chunk := response.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
            except (OSError, http.client.HTTPException, ValueError) as e:
                raise UserError(
                    f"{url}: download interrupted at {part.stat().st_size} bytes ({e}); run again to resume"
                ) from None
            finally:
                bar.close()
            if total is not None and part.stat().st_size != total:
                raise UserError(
                    f"{url}: download interrupted at {part.stat().st_size} of {total} bytes; run again to resume"
                )
    if expected:
        try:
            _verify(part, expected, url, "the download was not kept")
        except UserError:
            part.unlink()
            raise
    else:
        digest = file_digest(part, "sha256")
        _record(dest.parent, dest.name, digest)
        print(f"{dest.name}: no published checksum known; recorded sha256 {digest} in "
              f"{dest.parent / SUMS_FILE}", file=sys.stderr)  # fmt: skip
    os.replace(part, dest)
    return dest


# ---------------------------------------------------------------- extraction


def _check_member(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise UserError(f"{archive}: refusing member {name!r} (it would be written outside the target directory)")
    return path


def extract(archive: Path, dest: Path) -> None:
    """Extract a .tar[.gz|.bz2|.xz]/.tgz or .zip into `dest`, refusing any member that could land
    outside it (absolute, `..`, links, devices). All or nothing: a staging directory is filled
    first, then its top-level entries are renamed into `dest`."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".extract-{archive.name}.tmp{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    _check_member(info.filename, archive)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink entry
                        raise UserError(f"{archive}: refusing link member {info.filename!r}")
                z.extractall(staging)
        else:
            with tarfile.open(archive, "r:*") as t:
                members = t.getmembers()
                for m in members:
                    _check_member(m.name, archive)
                    if not (m.isfile() or m.isdir()):
                        raise UserError(f"{archive}: refusing member {m.name!r} (links and devices are not allowed)")
                # the stdlib's own "data" filter too, where available (3.10.12+, 3.11.4+)
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                t.extractall(staging, members=members, **safe)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"{archive}: damaged or truncated archive ({type(e).__name__}: {e})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for entry in staging.iterdir():
        target = dest / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(entry, target)
    staging.rmdir()


def download(dataset: str, dest: Path, *, checksums: dict[str, str] | None = None, progress: bool = True) -> Path:
    """Fetch (and extract) `dataset`'s official files into `dest`; return `dest`, ready for its reader.

    checksums: {filename: md5 or sha256 hex} for files without a known checksum (or to override)."""
    if dataset in _NO_DOWNLOAD:
        raise UserError(f"no download for {dataset}: {_NO_DOWNLOAD[dataset]}")
    if dataset not in RESOURCES:
        raise UserError(f"unknown dataset {dataset!r} (downloadable: {', '.join(RESOURCES)})")
    dest = Path(dest).expanduser()
    for resource in RESOURCES[dataset]:
        checksum = (checksums or {}).get(resource.filename, resource.md5)
        path = fetch(resource.url, dest / resource.filename, checksum=checksum, progress=progress)
        if resource.extract:
            extract_once(path, dest)
    return dest


def extract_once(archive: Path, dest: Path) -> Path:
    """`extract` unless a marker in `dest` says this archive was already fully extracted; `dest`."""
    archive = Path(archive)
    if not (tarfile.is_tarfile(archive) or zipfile.is_zipfile(archive)):
        raise UserError(f"{archive}: not a directory, nor a tar or zip archive of the dataset files")
    marker = Path(dest) / f".{archive.name}.extracted"
    if not marker.is_file():
        extract(archive, dest)
        marker.touch()
    return Path(dest)
