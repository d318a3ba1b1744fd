"""A folder of images as data: JPEG/PNG files labelled by sub-folder name (torchvision's ImageFolder
convention: `root/cat/1.jpg` is class 0 when `cat` sorts first) or unlabelled (files directly in
`root`). Images are decoded with Pillow when a batch needs them, resized, centre-cropped to
`image_size`, scaled to [0, 1], normalized with `mean`/`std`, and laid out as CHW float32; with
`workers`, a batch's images are decoded in that many worker processes. A Hugging Face folder's own image
processor can do the resizing and normalizing instead (`ImagePreprocess.processor`, `with_defaults`).
"""

from __future__ import annotations

import atexit
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import repeat
from pathlib import Path

import numpy as np

from effkit.errors import InputError, UsageError
from effkit.samples import Samples

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class ImagePreprocess:
    """How images become arrays. `image_size` (H, W) is the crop; `resize` the shorter side before it
    (default: the crop's larger side). None for both keeps the files' own size, which must agree.
    `mean`/`std` None: not given (no normalization). `processor`, when set, turns a list of decoded
    HWC uint8 images into one NCHW float32 array (a Hugging Face image processor) and replaces the
    resizing and normalizing here."""

    image_size: tuple[int, int] | None = None
    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    workers: int = 0  # processes that decode a batch's images; 0: this process
    processor: Callable[[list[np.ndarray]], np.ndarray] | None = field(default=None, compare=False, repr=False)

    def given(self) -> bool:
        """Whether any of the size and normalization options was set."""
        return any(v is not None for v in (self.image_size, self.resize, self.mean, self.std))


def with_defaults(given: ImagePreprocess, model_default: ImagePreprocess | None) -> ImagePreprocess:
    """How a model reads images: its own preprocessing (`model_default`, e.g. a Hugging Face folder's
    image processor) when the user set none of --image-size/--resize/--mean/--std; else the values
    the user set, the model's for the rest, and effkit's resize and crop instead of the processor."""
    if model_default is None:
        return given
    if not given.given():
        return replace(model_default, workers=given.workers)
    return replace(given, image_size=given.image_size or model_default.image_size,
                   mean=given.mean or model_default.mean, std=given.std or model_default.std)


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
    Workers send back 8-bit pixels, a quarter of the float32 bytes, and this process normalizes them
    (or hands them to the image processor)."""
    if prep.workers < 1 or len(files) < 2:
        return [load_image(f, prep) for f in files]
    chunk = max(1, len(files) // (4 * prep.workers))  # a few chunks per worker: even load, little overhead
    plain = _decoding(prep)
    pixels = list(_pool(prep.workers).map(_pixels, files, repeat(plain), chunksize=chunk))
    if prep.processor is not None:
        return list(prep.processor(pixels))
    return [_normalize(p, prep) for p in pixels]


def _decoding(prep: ImagePreprocess) -> ImagePreprocess:
    """What decoding needs to know: with a processor, nothing (it resizes itself), so the files'
    own pixels; without, the size. Never the processor, which need not pickle to worker processes."""
    return ImagePreprocess(workers=prep.workers) if prep.processor is not None else prep


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
    if prep.processor is not None:
        return prep.processor([_pixels(path, _decoding(prep))])[0]
    return _normalize(_pixels(path, prep), prep)


def image_batch(files: list[Path], prep: ImagePreprocess) -> np.ndarray:
    """`files` as one NCHW float32 batch (`--image`); the images must come out the same size."""
    _need_pillow(f"{files[0]} is an image")
    return _stack(files, decode_images(files, prep))


def _stack(files: list[Path], rows: list[np.ndarray]) -> np.ndarray:
    for file, row in zip(files, rows):
        if row.shape != rows[0].shape:
            raise InputError(f"{file} is {row.shape[2]}x{row.shape[1]} pixels, {files[0]} "
                             f"{rows[0].shape[2]}x{rows[0].shape[1]}", "pass --image-size HxW to resize them all")
    return np.stack(rows)


def _need_pillow(what: str) -> None:
    try:
        import PIL  # noqa: F401
    except ImportError as e:
        raise UsageError(f"{what}, and reading images needs Pillow", "pip install 'effkit[images]'") from e


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
    array = (array - np.asarray(prep.mean or 0.0, np.float32)) / np.asarray(prep.std or 1.0, np.float32)
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
    _need_pillow(f"{root} is a folder of images")
    files, labels, _ = image_files(root)
    if not files:
        raise InputError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)})",
                         "put images in it, or one sub-folder of images per class")
    if limit is not None:
        files, labels = files[:limit], None if labels is None else labels[:limit]
    first = load_image(files[0], prep)

    def read(k: np.ndarray) -> np.ndarray:
        batch = [files[int(j)] for j in k]
        return _stack([files[0], *batch], [first, *decode_images(batch, prep)])[1:]

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


def parse_floats(option: str, text: str | None, default: tuple[float, ...] | None) -> tuple[float, ...] | None:
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
