"""What the lent GPU machine lacks for `benchmarks.gpu_check`, packed here into one folder to carry there:
`python -m benchmarks.gpu_bundle [--out .gpu] [--python 3.12]`, then on that machine `bash benchmarks/gpu_run.sh`.

That machine's image (device/KINDS.md) has Python 3.12 with torch, triton, numpy, numba, cv2, pillow, scipy,
tqdm, matplotlib and tensorboard, reaches no package index, and lacks fastvit itself and ffcv; ffcv's C
extension links Debian's libopencv_core/imgproc and libturbojpeg, which that image does not have either.
The bundle holds:
  wheels/  fastvit (pure Python) and ffcv built for the device's Python (no dependencies: the image has them);
  lib/     every shared library ffcv's extension resolves here, except the C and C++ runtimes (the image's,
           Ubuntu 24.04's, are newer than this machine's), found by `ldd`, so `LD_LIBRARY_PATH=lib` serves them;
  MANIFEST.json  each file's size and sha256, the Python it was built for.
Its size is checked against the device tool's 64 MiB carry limit.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FFCV = "ffcv==1.0.2"
CARRY_LIMIT = 64 << 20  # the device tool's limit on everything that travels, the working tree included
# Present on every Linux the wheels could land on; the device's copies are at least as new as a Debian 12 build needs.
SYSTEM_LIBRARIES = re.compile(r"^(ld-linux.*|linux-vdso.*|libc|libm|libdl|libpthread|librt|libresolv|libstdc\+\+|"
                              r"libgcc_s)\.so")


def find_python(version: str) -> str:
    """An interpreter of `version` (e.g. "3.12") that runs: this one, `pythonX.Y` on PATH, or a pyenv build."""
    candidates = [sys.executable] if f"{sys.version_info.major}.{sys.version_info.minor}" == version else []
    candidates += [shutil.which(f"python{version}")]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))[::-1]
    for python in filter(None, candidates):  # a pyenv shim on PATH exists but fails outside its pyenv version
        if subprocess.run([python, "-c", "import pip"], capture_output=True).returncode == 0:
            return python
    raise SystemExit(f"no working Python {version} with pip (PATH or ~/.pyenv/versions): ffcv's extension must be "
                     "built for the device's Python; --python X.Y builds the bundle for another one")


def _pip_wheel(python: str, requirement: str, dest: Path, *extra: str) -> Path:
    before = set(dest.glob("*.whl"))
    done = subprocess.run([python, "-m", "pip", "wheel", "-q", "--no-deps", *extra, "-w", str(dest), requirement],
                          cwd=ROOT, capture_output=True, text=True)
    made = sorted(set(dest.glob("*.whl")) - before)
    if done.returncode or not made:
        raise SystemExit(f"pip wheel {requirement} with {python} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return made[-1]


def shared_libraries(extension: Path) -> dict[str, Path]:
    """soname -> resolved path of every library `ldd` lists for `extension`, the system runtimes left out."""
    out = subprocess.run(["ldd", str(extension)], check=True, capture_output=True, text=True).stdout
    found, missing = {}, []
    for line in out.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+(\S+)", line)
        if not m or SYSTEM_LIBRARIES.match(m.group(1)):
            continue
        if m.group(2) == "not":
            missing.append(m.group(1))
        else:
            found[m.group(1)] = Path(m.group(2))
    if missing:
        raise SystemExit(f"{extension.name} needs libraries this machine lacks: {', '.join(missing)} "
                         "(make system installs libopencv-dev and libturbojpeg0-dev)")
    return found


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build(out: Path, python_version: str) -> dict:
    python = find_python(python_version)
    if out.exists():
        if any(out.iterdir()) and not (out / "MANIFEST.json").exists():
            raise SystemExit(f"{out} is not empty and holds no MANIFEST.json: not a bundle, left as it is")
        shutil.rmtree(out)
    wheels, lib = out / "wheels", out / "lib"
    wheels.mkdir(parents=True)
    lib.mkdir()
    with tempfile.TemporaryDirectory() as tmp:
        # fastvit from a copy of the files git would send (no stale build/ folder), with this venv's setuptools
        source = Path(tmp) / "fastvit"
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout.split("\0")
        for name in filter(None, listed):
            if (ROOT / name).is_file():
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, source / name)
        _pip_wheel(sys.executable, str(source), wheels, "--no-build-isolation")
    ffcv = _pip_wheel(python, FFCV, wheels)  # from pip's wheel cache once built for that Python
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(ffcv) as z:
        names = [n for n in z.namelist() if re.search(r"(^|/)_libffcv[^/]*\.so$", n)]
        if not names:
            raise SystemExit(f"{ffcv.name} holds no _libffcv extension")
        for soname, path in shared_libraries(Path(z.extract(names[0], tmp))).items():
            shutil.copy2(path.resolve(), lib / soname)  # the file itself under its soname, not a symlink chain
    files = sorted(p for p in out.rglob("*") if p.is_file())
    manifest = {"python": python_version, "built_with": python, "ffcv": FFCV,
                "files": {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}}
    total = sum(f["bytes"] for f in manifest["files"].values())
    manifest["bytes"] = total
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    if total > CARRY_LIMIT // 2:  # the working tree travels too
        raise SystemExit(f"the bundle is {total / 2**20:.1f} MiB: over half the device tool's 64 MiB carry limit")
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / ".gpu"), help="the folder to (re)build; name it in carry")
    parser.add_argument("--python", default="3.12", help="the device's Python version (3.12 in its image)")
    args = parser.parse_args(argv)
    manifest = build(Path(args.out), args.python)
    for name, f in manifest["files"].items():
        print(f"{f['bytes'] / 2**20:7.2f} MiB  {name}")
    print(f"{manifest['bytes'] / 2**20:.1f} MiB in {args.out} for Python {args.python}; on the GPU machine: "
          "run(command='bash benchmarks/gpu_run.sh', carry=['.gpu'])")


if __name__ == "__main__":
    main()
