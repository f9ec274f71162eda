"""One PNG writer (benchmark.rundir.write_png / write_png_pixels): every figure and image grid the
suite writes is the same bytes for the same data, with no version stamp that changes between installs."""

import struct

import numpy as np
import pytest

from benchmark.rundir import sample_grid_png, write_png, write_png_pixels


def chunk_types(data: bytes) -> list[bytes]:
    out, i = [], 8
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        out.append(data[i + 4:i + 8])
        i += 12 + n
    return out


def roc_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    arrays, mia = {}, {}
    for name, shift in (("mia-loss", 0.5), ("mia-secmi", 1.0)):
        key = name.replace("-", "_")
        arrays[f"{key}_scores"] = np.r_[rng.normal(shift, 1, 100), rng.normal(0, 1, 100)]
        arrays[f"{key}_labels"] = np.r_[np.ones(100, int), np.zeros(100, int)]
        mia[name] = {"auc": 0.6, "n_nonmembers": 100}
    return {"mia": mia}, arrays, list(mia)


def test_roc_png_written_twice_is_the_same_bytes_without_a_version_stamp(tmp_path):
    from attacks.evaluate import _roc_png

    for name in ("a.png", "b.png"):
        _roc_png(*roc_inputs(), tmp_path / name, title="scenario seed 0")
    a = (tmp_path / "a.png").read_bytes()
    assert a == (tmp_path / "b.png").read_bytes()
    assert b"tEXt" not in chunk_types(a)  # matplotlib's 'Software' stamp names its version


def test_figures_and_pixels_go_through_one_writer(tmp_path):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    assert write_png(tmp_path / "sub" / "fig.png", fig, dpi=50) == tmp_path / "sub" / "fig.png"
    assert not plt.get_fignums()  # closed
    assert b"tEXt" not in chunk_types((tmp_path / "sub" / "fig.png").read_bytes())

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 1, 8, 8), dtype=np.uint8)
    sample_grid_png(images, tmp_path / "grid.png")
    write_png_pixels(tmp_path / "gray.png", rng.integers(0, 256, (5, 7), dtype=np.uint8))
    write_png_pixels(tmp_path / "rgb.png", rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    for name in ("grid.png", "gray.png", "rgb.png"):
        assert chunk_types((tmp_path / name).read_bytes()) == [b"IHDR", b"IDAT", b"IEND"], name
    sample_grid_png(images, tmp_path / "again.png")
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "grid.png").read_bytes()
    with pytest.raises(ValueError, match="uint8"):
        write_png_pixels(tmp_path / "bad.png", np.zeros((4, 4), np.float32))
