"""The encoder's built-in ROI is the strong pixels dilated by roi_margin (square windows,
clipped to the frame). Few spots: each strong run's rectangle painted directly; many: the
packed-map dilation. Both give the same region, the dilation of the margin-0 region."""
import numpy as np
import pytest

import redml_reduce as rr


def row_runs(m: np.ndarray) -> int:
    return int(m[:, 0].sum() + (m[:, 1:] & ~m[:, :-1]).sum())


def frame_with(strong_fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frame = rng.poisson(1.0, (203, 157)).astype(np.uint16)
    hot = rng.random(frame.shape) < strong_fraction
    frame[hot] = 60
    frame[:3, 40:44] = 90  # strong pixels on the border: the windows are clipped
    return frame


@pytest.mark.parametrize("fraction,dense", [(0.002, False), (0.05, True)], ids=["few", "many"])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_roi_is_the_dilated_strong_region(fraction, dense, nthreads):
    frame = frame_with(fraction, 11)
    roi0 = rr.codec.exact_mask(rr.codec.encode(frame, 0, roi_margin=0, nthreads=nthreads))
    runs = row_runs(roi0)
    # many: the runs' rectangles would cover more than an eighth of the frame (packed path)
    assert (runs > frame.size / 100) == dense, runs
    for margin in (1, 2, 5, 300):
        roi = rr.codec.exact_mask(rr.codec.encode(frame, 0, roi_margin=margin, nthreads=nthreads))
        assert np.array_equal(roi, rr.spots.roi_mask(roi0, margin)), margin
