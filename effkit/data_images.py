"""A folder of images as data: JPEG/PNG files labelled by sub-folder name (torchvision's ImageFolder
convention: `root/cat/1.jpg` is class 0 when `cat` sorts first) or unlabelled (files directly in
`root`). Images are decoded with Pillow when a batch needs them, resized, centre-cropped to
`image_size`, scaled to [0, 1], normalized with `mean`/`std`, and laid out as CHW float32; with
`workers`, a batch's images are decoded in that many worker processes.
"""

from __future__ import annotations

import atexit
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np

from effkit.errors import InputError, UsageError
from effkit.samples import Samples

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class ImagePreprocess:
    """How images become arrays. `image_size` (H, W) is the crop; `resize` the shorter side before it
    (default: the crop's larger side). None for both keeps the files' own size, which must agree."""

    image_size: tuple[int, int] | None = None
    resize: int | None = None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    workers: int = 0  # processes that decode a batch's images; 0: this process


_POOLS: dict[int, ProcessPoolExecutor] = {}


def _pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` decoding processes, started once and kept for the run. They are started
    by a fork server, not forked from this process: a fork of a process whose torch and ONNX
    Runtime thread pools are running can deadlock."""
    if workers not in _POOLS:
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
    return _POOLS[workers]


@atexit.register
def _stop_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(wait=False, cancel_futures=True)
    _POOLS.clear()


def decode_images(files: list[Path], prep: ImagePreprocess) -> list[np.ndarray]:
    """`load_image` of every file, decoded in `prep.workers` processes when there are several files.
    Workers send back 8-bit pixels, a quarter of the float32 bytes, and this process normalizes them."""
    if prep.workers < 1 or len(files) < 2:
        return [load_image(f, prep) for f in files]
    chunk = max(1, len(files) // (4 * prep.workers))  # a few chunks per worker: even load, little overhead
    return [_normalize(pixels, prep) for pixels in _pool(prep.workers).map(_pixels, files, repeat(prep), chunksize=chunk)]


def image_files(root: Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """(files, labels or None, class names): labelled when `root` holds sub-folders of images."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:
        files, labels = [], []
        for index, name in enumerate(classes):
            found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            files += found
            labels += [index] * len(found)
        return files, labels, classes
    return sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), None, []


def is_image_folder(root: Path) -> bool:
    """True when `root` holds image files (directly or one level down) and no .npy samples."""
    if any(root.glob("*.npy")):
        return False
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.rglob("*") if p.is_file())


def load_image(path: Path, prep: ImagePreprocess) -> np.ndarray:
    """One image as a CHW float32 array; InputError naming the file when it does not decode."""
    return _normalize(_pixels(path, prep), prep)


def _pixels(path: Path, prep: ImagePreprocess) -> np.ndarray:
    """The image decoded, resized and cropped: HWC uint8."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if prep.image_size is not None:
                img = _resize_and_crop(img, prep)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path} is not a readable image: {e}", "remove or replace the file") from e


def _normalize(pixels: np.ndarray, prep: ImagePreprocess) -> np.ndarray:
    array = pixels.astype(np.float32) / 255.0
    array = (array - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def _resize_and_crop(img, prep: ImagePreprocess):
    from PIL import Image

    height, width = prep.image_size
    shorter = prep.resize or max(height, width)
    scale = shorter / min(img.size)
    img = img.resize((max(width, round(img.size[0] * scale)), max(height, round(img.size[1] * scale))),
                     Image.BILINEAR)
    left, top = (img.size[0] - width) // 2, (img.size[1] - height) // 2
    return img.crop((left, top, left + width, top + height))


def image_samples(root: Path, prep: ImagePreprocess, limit: int | None) -> tuple[Samples, np.ndarray | None]:
    """The folder as lazily decoded Samples and its labels (None when unlabelled)."""
    try:
        import PIL  # noqa: F401
    except ImportError as e:
        raise UsageError(f"{root} is a folder of images, and reading them needs Pillow",
                         "pip install 'effkit[images]'") from e
    files, labels, _ = image_files(root)
    if not files:
        raise InputError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)})",
                         "put images in it, or one sub-folder of images per class")
    if limit is not None:
        files, labels = files[:limit], None if labels is None else labels[:limit]
    first = load_image(files[0], prep)

    def read(k: np.ndarray) -> np.ndarray:
        rows = decode_images([files[int(j)] for j in k], prep)
        for j, row in zip(k, rows):
            if row.shape != first.shape:
                raise InputError(f"{files[int(j)]} is {row.shape[2]}x{row.shape[1]} pixels, {files[0]} "
                                 f"{first.shape[2]}x{first.shape[1]}", "pass --image-size HxW to resize them all")
        return np.stack(rows)

    return Samples(len(files), first.shape, np.float32, read), None if labels is None else np.array(labels)


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """'224' or '224x192' (height x width)."""
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) not in (1, 2) or min(size) < 1:
        raise UsageError(f"--image-size {text!r} is not a size", "write 224 or 224x192 (height x width)")
    return (size[0], size[-1])


def parse_floats(option: str, text: str | None, default: tuple[float, ...]) -> tuple[float, ...]:
    """'0.485,0.456,0.406' as three floats (one value is used for every channel)."""
    if text is None:
        return default
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in (1, 3) or (option == "--std" and min(values) <= 0):
        raise UsageError(f"{option} {text!r} is not one or three numbers", f"e.g. {option} 0.485,0.456,0.406")
    return values * 3 if len(values) == 1 else values
