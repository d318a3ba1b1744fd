"""DATA specs read lazily: .npz (stored members read in place, compressed ones whole), .npy, folders of
images (labelled by sub-folder or not), and factories returning a Dataset, IterableDataset, DataLoader
or generator. Peak memory does not grow with the data set's length. Bad input: one Error line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, NO_BAR, spec

OPTS = [*FAST, "--threads", "1", "--min-time", "0.05", "--allow-slower"]
ROOT = Path(__file__).parent.parent


def _load(text: str, images=None, **kw):
    from effkit.data import Reading, load_data

    return load_data(text, reading=Reading(images=images) if images else Reading(), **kw)


def test_npz_members_stored_are_read_in_place_and_compressed_ones_whole(tmp_path):
    from effkit.samples import Samples

    x = np.random.default_rng(0).standard_normal((10, 4))
    np.savez(tmp_path / "a.npz", x=x, labels=np.arange(10))
    np.savez_compressed(tmp_path / "c.npz", x=x, labels=np.arange(10))
    stored, packed = _load(str(tmp_path / "a.npz")), _load(str(tmp_path / "c.npz"))
    assert isinstance(stored.inputs[0], Samples) and stored.inputs[0].dtype == np.float32
    assert isinstance(packed.inputs[0], np.ndarray)
    for data in (stored, packed):
        assert np.array_equal(data.labels, np.arange(10))
        assert np.allclose(data.inputs[0][[7, 2]], x[[7, 2]].astype(np.float32))
        train, val = data.split(0.3, seed=1)
        assert sorted(np.concatenate([train.labels, val.labels])) == list(range(10))
        got = np.concatenate([b[0][0] for b in val.batches(2)])
        assert np.allclose(got, x[val.labels].astype(np.float32))
        assert np.asarray(data.take(3).inputs[0]).shape == (3, 4)


def test_npy_file_and_limit(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(24, dtype=np.float32).reshape(6, 4))
    data = _load(str(tmp_path / "x.npy"), limit=4)
    assert len(data) == 4 and data.labels is None
    assert np.array_equal(data.inputs[0][3], np.arange(12, 16, dtype=np.float32))


FACTORIES = '''
import numpy as np, torch

class Items(torch.utils.data.Dataset):
    def __len__(self): return 7
    def __getitem__(self, i): return torch.full((2,), float(i)), i % 3

class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        for i in range(9):
            yield torch.full((2,), float(i)), i % 3

def items(): return Items()
def stream(): return Stream()
def loader(): return torch.utils.data.DataLoader(Items(), batch_size=3)
def generator(): return (np.full((2,), i, np.float32) for i in range(5))
'''


@pytest.mark.parametrize("factory,n,labelled", [("items", 7, True), ("stream", 9, True), ("loader", 7, True),
                                                ("generator", 5, False)])
def test_factories_of_every_kind_are_read_lazily(tmp_path, factory, n, labelled):
    from effkit.samples import Samples

    (tmp_path / "f.py").write_text(FACTORIES)
    data = _load(f"{tmp_path / 'f.py'}:{factory}")
    assert isinstance(data.inputs[0], Samples) and len(data) == n
    assert np.array_equal(data.inputs[0][[4, 1]], [[4, 4], [1, 1]])
    assert (data.labels is not None) == labelled
    if labelled:
        assert list(data.labels[:4]) == [0, 1, 2, 0]
    assert len(_load(f"{tmp_path / 'f.py'}:{factory}", limit=3)) == 3


def _images(root: Path, classes=("cat", "dog"), per_class=3, size=(20, 24)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        folder = root / c if c else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_image_folder_labelled_by_subfolder_and_preprocessed(tmp_path):
    from effkit.data_images import ImagePreprocess

    _images(tmp_path / "imgs")
    data = _load(str(tmp_path / "imgs"), images=ImagePreprocess(image_size=(16, 16), mean=(0.5,) * 3, std=(0.25,) * 3))
    assert len(data) == 6 and list(data.labels) == [0, 0, 0, 1, 1, 1]
    batch = data.inputs[0][:4]
    assert batch.shape == (4, 3, 16, 16) and batch.dtype == np.float32
    assert -2.01 <= batch.min() and batch.max() <= 2.01  # (x - 0.5) / 0.25 with x in [0, 1]
    unlabelled = tmp_path / "flat"
    _images(unlabelled, classes=("",))
    data = _load(str(unlabelled))
    assert data.labels is None and data.inputs[0].shape == (3, 3, 20, 24)


def test_worker_processes_decode_the_same_arrays_and_report_a_bad_file(tmp_path):
    from effkit.data_images import ImagePreprocess
    from effkit.errors import InputError

    _images(tmp_path / "imgs", per_class=5)
    prep = ImagePreprocess(image_size=(16, 16), mean=(0.5,) * 3, std=(0.25,) * 3)
    alone = np.asarray(_load(str(tmp_path / "imgs"), images=prep).inputs[0])
    pooled = np.asarray(_load(str(tmp_path / "imgs"), images=ImagePreprocess(**{**prep.__dict__, "workers": 2})).inputs[0])
    assert alone.shape == (10, 3, 16, 16) and np.array_equal(alone, pooled)
    (tmp_path / "imgs" / "dog" / "9.png").write_bytes(b"not an image")
    data = _load(str(tmp_path / "imgs"), images=ImagePreprocess(image_size=(16, 16), workers=2))
    with pytest.raises(InputError, match=r"9.png is not a readable image") as raised:
        np.asarray(data.inputs[0])
    assert raised.value.hint == "remove or replace the file"  # the hint survives the worker process


def test_quantize_calibrates_on_a_folder_of_images(cli):
    _images(Path("imgs"), size=(40, 40))
    code, out, err = cli("quantize", spec("cnn"), "-o", "q.onnx", "--method", "static", "--calib", "imgs",
                         "--image-size", "16", "--mean", "0.5", "--std", "0.25", "--num-workers", "2", "--json",
                         "r.json", *OPTS)
    assert code == 0, err
    import json

    # calibrated on the folder's images, less the part held out to judge on (judge.judging_split)
    assert json.loads(Path("r.json").read_text())["details"]["calibration"]["samples"] >= 4


@pytest.mark.parametrize("make,message", [
    (lambda root: root.mkdir(), "Error: imgs holds no images or .npy files (put images in it"),
    (lambda root: (_images(root), (root / "cat" / "9.jpg").write_bytes(b"not a jpeg")),
     "Error: imgs/cat/9.jpg is not a readable image"),
    (lambda root: (_images(root, size=(16, 16)), _images(root / "dog", classes=("",), per_class=1, size=(18, 16))),
     "Error: imgs/dog/0.jpg is 16x18 pixels, imgs/cat/0.jpg 16x16"),
])
def test_bad_image_folders_end_in_one_line_naming_the_file(cli, make, message):
    make(Path("imgs"))
    code, out, err = cli("quantize", spec("cnn"), "-o", "q.onnx", "--method", "static", "--calib", "imgs", *OPTS)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(message), err
    assert len([line for line in err.splitlines() if line.startswith("Error:")]) == 1
    assert not Path("q.onnx").exists()


PEAK = '''
import resource, sys
import numpy as np
from effkit.data import load_data
data = load_data(sys.argv[1])
train, val = data.split(0.1)
total = 0.0
for d in (train, val, data.take(len(data) // 2)):
    for inputs, labels in d.batches(64):
        total += float(inputs[0].sum())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
'''


MAKE = '''
import sys
import numpy as np
path, n = sys.argv[1], int(sys.argv[2])
x = np.lib.format.open_memmap(path + ".x.npy", mode="w+", dtype=np.float32, shape=(n, 1, 32, 32))
x[:] = 1.0
np.savez(path, x=x, labels=np.zeros(n, np.int64))
'''


def test_peak_memory_does_not_grow_with_the_data_sets_length(tmp_path):
    """10x the samples (16 MB -> 160 MB of inputs) costs well under the difference in peak memory."""
    script = tmp_path / "peak.py"
    script.write_text(PEAK)
    peaks = {}
    for n in (4_000, 40_000):
        # written by a child: Linux carries a process's peak memory across fork and exec, so the
        # measuring child must be started by a parent that never held the data
        made = subprocess.run([sys.executable, "-c", MAKE, str(tmp_path / f"d{n}.npz"), str(n)], capture_output=True,
                              text=True)
        assert made.returncode == 0, made.stderr
        done = subprocess.run([sys.executable, str(script), str(tmp_path / f"d{n}.npz")], capture_output=True,
                              text=True, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr
        peaks[n] = int(done.stdout.split()[-1]) / 1024
    assert peaks[40_000] - peaks[4_000] < 40, peaks  # the inputs alone differ by 144 MB


def test_limit_takes_the_first_samples_of_every_data_option(cli):
    rng = np.random.default_rng(0)
    np.savez("eval.npz", x=rng.standard_normal((8, 16)).astype(np.float32), labels=np.arange(8) % 4)
    code, out, err = cli("prune", spec("mlp"), "--eval", "eval.npz", "--limit", "5", "--ratio", "0.25", "-o", "p.pt2",
                         "--json", "r.json", *FAST, *NO_BAR)
    assert code == 0, err
    import json

    result = json.loads(Path("r.json").read_text())
    assert result["fidelity"]["rows"] == 4  # 5 samples in whole batches of the example's 2 rows
    assert all(round(result["accuracy"][side] * 5, 9) % 1 == 0 for side in ("before", "after"))  # over 5 labels
    code, _, err = cli("prune", spec("mlp"), "--eval", "eval.npz", "--limit", "0", "-o", "p2.pt2")
    assert code == 2 and "--limit" in err
