"""NXmx metadata: what DIALS (dials.import), XDS and CrystFEL need beside the frames.

    geom = BeamGeometry(beam_x=1034.3, beam_y=1082.7, distance_mm=120, pixel_size_mm=0.075, wavelength_a=1.0)
    with FrameWriter("run.nxs", (h, w), "int32", q=1, geometry=geom, pixel_mask=gaps) as w:
        for frame in frames:
            w.write(frame)

FrameWriter calls write_nxmx() when it is given a geometry; the frames go to
/entry/data/data as always. The detector is one flat module normal to the beam, described
by NeXus transformations in McStas coordinates (z along the beam, y up): the module's
first pixel sits at beam_x, beam_y pixels from the beam and `distance` downstream of the
sample. Stills: the sample has no goniometer (depends_on "."), so DIALS sees a sequence of
still shots.
"""
from __future__ import annotations

from typing import Optional

import h5py
import numpy as np

from ..background import BeamGeometry

__all__ = ["write_nxmx", "pixel_mask_from_gaps"]

DETECTOR = "/entry/instrument/detector"


def _text(group, name, value):
    group.create_dataset(name, data=np.bytes_(value))


def _axis(group, name, value, units, vector, depends_on, kind="translation", offset=None):
    d = group.create_dataset(name, data=np.float64(value))
    d.attrs["units"] = np.bytes_(units)
    d.attrs["transformation_type"] = np.bytes_(kind)
    d.attrs["vector"] = np.asarray(vector, np.float64)
    d.attrs["depends_on"] = np.bytes_(depends_on)
    if offset is not None:
        d.attrs["offset"] = np.asarray(offset, np.float64)
        d.attrs["offset_units"] = np.bytes_(units)
    return d


def pixel_mask_from_gaps(gaps: np.ndarray) -> np.ndarray:
    """NXmx pixel_mask (uint32, 0 = good) with bit 0 ('gap') set where gaps is True."""
    return np.asarray(gaps, bool).astype(np.uint32)


def write_nxmx(f: h5py.File, geometry: BeamGeometry, frame_shape, *, data_path: str = "/entry/data/data",
               pixel_mask: Optional[np.ndarray] = None, detector_name: str = "redml_reduce detector",
               sensor_material: str = "Si", sensor_thickness_mm: float = 0.32,
               saturation_value: Optional[int] = None, underload_value: Optional[int] = 0,
               count_time_s: Optional[float] = None) -> None:
    """Writes the NXmx groups of one still-shot series into the open file `f`.

    The frames dataset at data_path need not exist yet (it is linked by name from the
    detector group). pixel_mask: nonzero = do not use (NXmx bits: 1 gap, 2 dead, 4 under-
    responding, 8 over-responding, 16 noisy). Values <= underload_value - 1 and above
    saturation_value are untrusted for DIALS (e.g. the -1 of module gaps).
    """
    h, w = (int(v) for v in frame_shape)
    px_mm = float(geometry.pixel_size_mm)
    entry = f.require_group("entry")
    entry.attrs["NX_class"] = np.bytes_("NXentry")
    entry.attrs["default"] = np.bytes_("data")
    _text(entry, "definition", "NXmx")
    data = entry.require_group("data")
    data.attrs["NX_class"] = np.bytes_("NXdata")
    data.attrs["signal"] = np.bytes_(data_path.rsplit("/", 1)[-1])

    sample = entry.create_group("sample")
    sample.attrs["NX_class"] = np.bytes_("NXsample")
    _text(sample, "depends_on", ".")
    _text(sample, "name", "still shots")

    source = entry.create_group("source")
    source.attrs["NX_class"] = np.bytes_("NXsource")
    _text(source, "name", "redml_reduce")

    instrument = entry.create_group("instrument")
    instrument.attrs["NX_class"] = np.bytes_("NXinstrument")
    _text(instrument, "name", "redml_reduce")
    beam = instrument.create_group("beam")
    beam.attrs["NX_class"] = np.bytes_("NXbeam")
    wl = beam.create_dataset("incident_wavelength", data=np.float64(geometry.wavelength_a))
    wl.attrs["units"] = np.bytes_("angstrom")

    det = instrument.create_group("detector")
    det.attrs["NX_class"] = np.bytes_("NXdetector")
    _text(det, "description", detector_name)
    _text(det, "depends_on", f"{DETECTOR}/transformations/translation")
    _text(det, "sensor_material", sensor_material)
    thick = det.create_dataset("sensor_thickness", data=np.float64(sensor_thickness_mm))
    thick.attrs["units"] = np.bytes_("mm")
    for name in ("x_pixel_size", "y_pixel_size"):
        d = det.create_dataset(name, data=np.float64(px_mm / 1000))
        d.attrs["units"] = np.bytes_("m")
    dist = det.create_dataset("distance", data=np.float64(geometry.distance_mm / 1000))
    dist.attrs["units"] = np.bytes_("m")
    for name, value in (("beam_center_x", geometry.beam_x), ("beam_center_y", geometry.beam_y)):
        d = det.create_dataset(name, data=np.float64(value))
        d.attrs["units"] = np.bytes_("pixel")
    if saturation_value is not None:
        det.create_dataset("saturation_value", data=np.int64(saturation_value))
    if underload_value is not None:
        det.create_dataset("underload_value", data=np.int64(underload_value))
    if count_time_s is not None:
        d = det.create_dataset("count_time", data=np.float64(count_time_s))
        d.attrs["units"] = np.bytes_("s")
    if pixel_mask is not None:
        pixel_mask = np.asarray(pixel_mask)
        if pixel_mask.shape != (h, w):
            raise ValueError(f"pixel_mask has shape {pixel_mask.shape}, the frames {(h, w)}")
        det.create_dataset("pixel_mask", data=pixel_mask.astype(np.uint32), compression="gzip", shuffle=True)
        det.create_dataset("pixel_mask_applied", data=False)
    det["data"] = h5py.SoftLink(data_path)

    transformations = det.create_group("transformations")
    transformations.attrs["NX_class"] = np.bytes_("NXtransformations")
    _axis(transformations, "translation", geometry.distance_mm, "mm", (0, 0, 1), ".")

    module = det.create_group("module")
    module.attrs["NX_class"] = np.bytes_("NXdetector_module")
    module.create_dataset("data_origin", data=np.array([0, 0], np.int32))
    module.create_dataset("data_size", data=np.array([h, w], np.int32))
    # McStas x points left (seen along the beam) and y up: the first pixel of the module is
    # beam_x pixels to the left of the beam and beam_y pixels above it.
    corner = np.array([geometry.beam_x * px_mm, geometry.beam_y * px_mm, 0.0])
    length = float(np.linalg.norm(corner))
    vector = corner / length if length > 0 else np.array([1.0, 0.0, 0.0])
    _axis(module, "module_offset", length, "mm", vector, f"{DETECTOR}/transformations/translation")
    offset_path = f"{DETECTOR}/module/module_offset"
    _axis(module, "fast_pixel_direction", px_mm, "mm", (-1, 0, 0), offset_path)
    _axis(module, "slow_pixel_direction", px_mm, "mm", (0, -1, 0), offset_path)
