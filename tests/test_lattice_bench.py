"""The fidelity benchmark's lattice settings (redml_study.yield_study): setting names, the
built-in indexer's crystals on the thaumatin stills, and predicted_fraction measured by
position against DIALS's xyzcal.px."""
from pathlib import Path

import fabio
import h5py
import numpy as np
import pytest

from redml_reduce.lattice import Crystal, lattice_roi, read_expt
from redml_reduce.recompress.outputs import geometry_from_header
from redml_study.yardstick import INTEGRATED_DTYPE
from redml_study.yield_study import (Series, builtin_crystals, codec_writer_options, indexing_figures,
                                     lattice_setting, predicted_fraction, write_series_lattice)

DATA = Path(__file__).parent / "data"
FRAMES = ("thau_3_2_0001.cbf.bz2", "thau_3_2_0010.cbf.bz2", "thau_3_2_0017.cbf.bz2")  # two hits, a blank
CELL, SPACE_GROUP = (57.9, 57.9, 150.6, 90.0, 90.0, 90.0), "P41212"


@pytest.fixture(scope="module")
def stills():
    """(series of the three stills, DIALS's crystals per frame, DIALS's integrated reflections
    of frames 1 and 10 as an INTEGRATED_DTYPE table with their xyzcal.px)."""
    images = [fabio.open(str(DATA / "thaumatin" / name)) for name in FRAMES]
    frames = [np.asarray(im.data) for im in images]
    series = Series("thaumatin", len(frames), frames[0].shape, frames[0].dtype,
                    geometry_from_header(images[0].header), lambda: iter(frames))
    table = read_expt(DATA / "lattice" / "thaumatin_integrated.expt")
    dials = [table.for_frame(name, 0) for name in FRAMES]
    with np.load(DATA / "lattice" / "thaumatin_predictions.npz") as z:
        integrated = np.zeros(len(z["image"]), INTEGRATED_DTYPE)
        integrated["image"] = z["image"]
        integrated["x"], integrated["y"] = z["xy"][:, 0], z["xy"][:, 1]
    return series, dials, integrated


def test_setting_names():
    assert lattice_setting("redml-lattice-dials-q8") == ("dials", 8.0, 8.0)  # default disc radius 8 px
    assert lattice_setting("redml-lattice-q16") == ("redml", 16.0, 8.0)
    assert lattice_setting("redml-lattice-dials-q16-r6") == ("dials", 16.0, 6.0)
    assert lattice_setting("redml-lattice-q24-r5.5") == ("redml", 24.0, 5.5)
    assert lattice_setting("redml-draw-q8") is None
    assert codec_writer_options("redml-lattice-q4") == {"q": 4.0, "recon": "draw"}
    assert codec_writer_options("redml-lattice-q4-r6") == {"q": 4.0, "recon": "draw"}
    for bad in ("redml-lattice-q", "redml-lattice-q16-r", "redml-lattice-dials-q16-x6", "redml-lattice-q16-r-6"):
        with pytest.raises(ValueError, match="lattice codec"):
            lattice_setting(bad)


def test_setting_radius_reaches_the_chunks(stills, tmp_path):
    """A "-rR" setting writes discs of R px: the pixels of the 8 px discs outside the 3 px ones
    (and outside the finder's region) are exact with the default radius, not all exact with -r3,
    whose file is smaller; the 3 px discs are exact in both."""
    series, dials, _ = stills
    hit = [dials[0], [], []]  # one indexed frame is enough
    written = {}
    for codec in ("redml-lattice-dials-q16", "redml-lattice-dials-q16-r3"):
        path = tmp_path / f"{codec}.nxs"
        written[codec] = write_series_lattice(series, codec, path, hit)
        with h5py.File(path, "r") as f:
            written[codec]["frame"] = f["entry/data/data"][0]
    frame = next(series.frames())
    small = lattice_roi(series.shape, series.geometry, dials[0], 3.0)
    ring = lattice_roi(series.shape, series.geometry, dials[0], 8.0) & ~small & (frame >= 0)
    default, r3 = written["redml-lattice-dials-q16"], written["redml-lattice-dials-q16-r3"]
    assert np.array_equal(default["frame"][ring], frame[ring])
    assert not np.array_equal(r3["frame"][ring], frame[ring])
    for w in (default, r3):
        assert np.array_equal(w["frame"][small], frame[small])
    assert r3["stored_bytes"] < default["stored_bytes"]


def test_predicted_fraction_by_position(stills):
    """DIALS's crystals predict every reflection DIALS integrated within 1 px; moved by 2 px,
    none counts (the Miller index alone would still match); a frame without crystals predicts
    nothing; without positions (old exports) the fraction is unknown."""
    series, dials, integrated = stills
    assert predicted_fraction(dials, integrated, series.shape) == 1.0
    moved = integrated.copy()
    moved["x"] += 2.0
    assert predicted_fraction(dials, moved, series.shape) == 0.0
    first_only = [dials[0], [], []]
    assert predicted_fraction(first_only, integrated, series.shape) == pytest.approx(np.mean(integrated["image"] == 0))
    old = integrated.copy()
    old["x"] = old["y"] = np.nan
    assert np.isnan(predicted_fraction(dials, old, series.shape))


def test_builtin_indexer_figures(stills):
    """The built-in indexer indexes the two hits in DIALS's lattice (under 0.2 degrees), not the
    blank, and its crystals predict most of DIALS's integrated reflections within 1 px."""
    series, dials, integrated = stills
    redml, ms, lattices = builtin_crystals(series, SPACE_GROUP, CELL)
    assert [bool(c) for c in redml] == [True, True, False]
    assert [len(c) for c in lattices] == [1, 1, 0]  # both hits' lattices explain enough spots for the policy
    assert all(isinstance(c, Crystal) and c.centring == "P" for c in redml[0] + redml[1])
    figures = indexing_figures(dials, redml, ms, SPACE_GROUP, CELL)
    assert figures["frames_indexed_redml"] == 2 and figures["frames_indexed_dials"] == 2
    assert figures["frames_indexed_both"] == 2 and figures["median_misorientation_deg"] < 0.2
    assert ms > 0
    # About 0.99 (0.989 and 0.991 on the two hits; 0.64 before the refinement to convergence with
    # the cell's free parameters in the predictor's model); the issue asks for 0.99.
    assert predicted_fraction(redml, integrated, series.shape) > 0.97
