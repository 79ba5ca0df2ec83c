"""JUNGFRAU photons in int16 where the calibration allows it: Calibration.photon_range against
the conversion of every raw word, and photon_dtype never choosing a type that clips a count."""
from __future__ import annotations

import numpy as np
import pytest

from redml_reduce import jungfrau as jf
from redml_reduce.jungfrau.layout import ADC_MAX

WORDS = np.arange(1 << 16, dtype=np.uint16).reshape(512, 128)  # every raw word, one per pixel


def uniform_calibration(rng, energy, signs=(1, -1, -1), shape=WORDS.shape, mask=None):
    """One pedestal and gain per stage for every pixel (drawn around a JUNGFRAU's), so that the
    frame of all 65536 words converts each (stage, ADC) pair once."""
    mag = np.array([41.0, 1.44, 0.11]) * (1 + 0.2 * rng.random(3))
    gain = np.array(signs, float) * mag
    ped = np.where(gain > 0, 1500.0, 14000.0) + 2000 * rng.standard_normal(3)
    return jf.Calibration(np.broadcast_to(ped[:, None, None], (3, *shape)),
                          np.broadcast_to(gain[:, None, None], (3, *shape)), energy, mask)


@pytest.mark.parametrize("energy", [3.0, 6.0, 12.4, 20.0])
@pytest.mark.parametrize("signs", [(1, -1, -1), (-1, 1, 1), (1, 1, -1)])
def test_photon_range_bounds_every_count_the_conversion_makes(rng, energy, signs):
    calib = uniform_calibration(rng, energy, signs)
    lo, hi = calib.photon_range()
    photons, info = jf.convert(WORDS, calib, out_dtype=np.int32, nthreads=1)
    counts = photons[(photons != np.iinfo(np.int32).min) & (photons != np.iinfo(np.int32).max)]
    assert counts.size == 3 * (ADC_MAX + 1) - 2  # markers: the invalid gain bits, the overload and error words
    assert lo - 0.5 <= counts.min() and counts.max() <= hi + 0.5
    # tight: the extremes are reached within one ADC step (G2's ADC 0 and ADC_MAX are the
    # overload and error words, never counts) and the rounding
    step = max(1.0 / abs(g) / energy for g in calib.gain[:, 0, 0])
    assert counts.min() <= lo + step + 0.5 and counts.max() >= hi - step - 0.5


def test_photon_dtype_int16_only_where_nothing_clips(rng):
    chosen = set()
    for energy in np.geomspace(2.0, 25.0, 12):
        calib = uniform_calibration(rng, float(energy))
        dt = calib.photon_dtype()
        chosen.add(dt)
        photons, info = jf.convert(WORDS, calib, out_dtype=dt, nthreads=1)
        assert info.counts["saturated"] == 0, (energy, dt)  # no count met the type's ends
        wide, _ = jf.convert(WORDS, calib, out_dtype=np.int32, nthreads=1)
        counts = (wide != np.iinfo(np.int32).min) & (wide != np.iinfo(np.int32).max)
        np.testing.assert_array_equal(photons[counts], wide[counts])  # the same counts, losslessly
        if dt == np.int32:  # int32 only where int16 would have clipped
            lo, hi = calib.photon_range()
            assert lo <= np.iinfo(np.int16).min + 2 or hi >= np.iinfo(np.int16).max - 2
    assert chosen == {np.dtype(np.int16), np.dtype(np.int32)}  # both occur over 2-25 keV


def test_photon_range_ignores_masked_and_broken_pixels(rng):
    mask = np.zeros(WORDS.shape, bool)
    mask[0, 0] = True
    calib = uniform_calibration(rng, 12.4, mask=mask)
    before = calib.photon_range()
    calib.gain[2, 0, 0] = 1e-9  # a masked pixel's absurd gain does not count
    calib.gain[1, 0, 1] = 0.0  # nor a zero gain (its words convert to the masked marker)
    calib.pedestal[0, 0, 2] = np.nan
    assert calib.photon_range() == pytest.approx(before)
    calib.gain[2, 0, 3] = 1e-3  # an unmasked pixel with a tiny gain makes the range huge: int32
    assert max(map(abs, calib.photon_range())) > 1e5 and calib.photon_dtype() == np.int32
    everything = jf.Calibration(calib.pedestal, calib.gain, 12.4, np.ones(WORDS.shape, bool))
    assert all(np.isnan(everything.photon_range())) and everything.photon_dtype() == np.int32


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
def test_acquired_series_records_the_markers_of_its_photon_type(tmp_path, rng, dtype):
    """A raw JUNGFRAU series stores its calibration beside photons of the series' type (int16
    where the calibration allows it): the stored photon_dtype and markers are that type's, not
    int32's, so `redml inspect` and a reader of the file see the markers the frames hold."""
    import h5py

    from redml_reduce.acquire.series import SeriesFile
    from redml_reduce.jungfrau.calibration import CALIBRATION_GROUP, describe_calibration

    calib = uniform_calibration(rng, 12.4, shape=(16, 32))
    f = SeriesFile(tmp_path / "s.h5", calib.image_shape(), dtype, codec_settings={"q": 0}, calibration=calib)
    f.close()
    lo, hi = jf.markers(dtype)
    with h5py.File(tmp_path / "s.h5", "r") as h:
        g = h[f"entry/instrument/detector/{CALIBRATION_GROUP}"]
        assert g.attrs["photon_dtype"] == np.dtype(dtype).name
        assert g.attrs["markers"].startswith(f"{lo}: masked") and f"{hi}: overload" in g.attrs["markers"]
        assert f"photons {np.dtype(dtype).name}" in describe_calibration(g)
