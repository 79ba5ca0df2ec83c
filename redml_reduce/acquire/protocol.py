"""Detector stream protocol: DECTRIS Stream V2 (also published by Jungfraujoch): the messages,
their parsing and validation, and their encoding (what a detector sends: sender.py sends it).

    msg = parse_message(zmq_bytes)        # StartMessage | ImageMessage | EndMessage, or StreamError
    frame = msg.data["threshold_1"].decode()
    raw = encode_image(frame, image_id=0, compression="bslz4")

One CBOR message per ZeroMQ message on a PUSH socket (clients PULL; DECTRIS default port
31001), each a map of text keys wrapped in the self-described CBOR tag 55799, whose first
key is "type": "start" (series settings and geometry), "image" (one exposure: a map from
channel name to frame), "end". Frames are RFC 8746 multi-dimensional arrays (tag 40:
[[rows, cols], typed array]); a typed array is a tag 64-87 (element type and byte order)
around a byte string, or around a DECTRIS compressed byte string (tag 56500:
["bslz4", element size, bytes] or ["lz4", 0, bytes], HDF5 filter framing). Geometry units
are those of the DECTRIS start message: beam centre in pixels, lengths in metres
(detector_distance, as Jungfraujoch sends it, or the z of detector_translation), wavelength
in angstrom (or incident_energy in eV).

Parsing never decompresses: an ImageMessage holds EncodedArray objects that a worker thread
decodes (EncodedArray.decode, through compression.py). Anything malformed raises StreamError (a ValueError) and
nothing else; declared sizes are checked before anything is allocated. Every field used is
checked for its type and range: ids are CBOR unsigned integers (< 2^64; counts < 2^63),
image_dtype one of IMAGE_DTYPES, numbers finite and within the ranges of FLOAT_RANGES
(geometry outside them leaves the series without geometry; other fields refuse the start
message), frame sides 1..2^20 pixels and at most MAX_FRAME_PIXELS, a pixel mask an integer
2-D array of the image size, the arrays of a JUNGFRAU calibration of the raw frame size.
"""
from __future__ import annotations

import datetime as _dt
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..background import BeamGeometry
from .compression import ALGORITHMS, compress, decompress
from .errors import StreamError

__all__ = ["DEFAULT_PORT", "StreamError", "EncodedArray", "StartMessage", "ImageMessage", "EndMessage",
           "parse_message", "encode_start", "encode_image", "encode_end", "typed_array_dtype", "typed_array_tag"]

DEFAULT_PORT = 31001
TAG_SELF_DESCRIBED = 55799
TAG_DATETIME = 0
TAG_MULTI_DIM = 40  # row major
TAG_MULTI_DIM_COLUMN_MAJOR = 1040
TAG_COMPRESSED = 56500
MAX_FRAME_PIXELS = 1 << 27  # the codec's own limit (docs/reliability.md)
MAX_SIDE = 1 << 20  # the codec's limit per side
UINT64_MAX = (1 << 64) - 1  # ids: CBOR unsigned integers
INT64_MAX = (1 << 63) - 1  # counts, stored as int64
# image_dtype: plain numeric types only, with an optional byte-order suffix ("uint16le")
IMAGE_DTYPES = {n: np.dtype(n) for n in ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
                                         "float32", "float64")}
# (low, high) of the numbers of a start message, in its units; low excluded where > 0 is needed
FLOAT_RANGES = {
    "beam_center_x": (-1e7, 1e7), "beam_center_y": (-1e7, 1e7),  # pixels
    "detector_distance": (0.0, 1e3), "detector_translation": (-1e3, 1e3),  # m
    "incident_wavelength": (0.0, 1e4), "incident_energy": (0.0, 1e9),  # angstrom, eV
    "pixel_size_x": (0.0, 1.0), "pixel_size_y": (0.0, 1.0), "sensor_thickness": (0.0, 1.0),  # m
    "count_time": (0.0, 1e6), "frame_time": (0.0, 1e6),  # s
    "energy_keV": (0.0, 1e6),  # JUNGFRAU calibration
}
_POSITIVE = {"detector_distance", "incident_wavelength", "incident_energy", "pixel_size_x", "pixel_size_y",
             "energy_keV"}


# ---------------------------------------------------------------- typed arrays (RFC 8746)

def typed_array_dtype(tag: int) -> Optional[np.dtype]:
    """The element type of typed-array tag 64..87 (tag = 0b010_f_s_e_ll: float, signed,
    little-endian, log2 of the size), None for other or reserved tags."""
    if not 64 <= tag <= 87:
        return None
    v = tag - 64
    is_float, signed, little, ll = (v >> 4) & 1, (v >> 3) & 1, (v >> 2) & 1, v & 3
    order = "<" if little else ">"
    if is_float:
        if signed or ll == 3:  # reserved; binary128 has no portable numpy type
            return None
        return np.dtype(f"{order}f{2 << ll}")
    size = 1 << ll
    if size == 1:
        if signed and little:  # tag 76 is reserved
            return None
        return np.dtype("i1" if signed else "u1")  # 68: uint8 clamped, same bits
    return np.dtype(f"{order}{'i' if signed else 'u'}{size}")


def typed_array_tag(dtype) -> int:
    """The little-endian typed-array tag of a numpy dtype (uint8: 64)."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        sizes = {2: 0, 4: 1, 8: 2}
        if dt.itemsize not in sizes:
            raise TypeError(f"no typed-array tag for {dt}")
        return 64 + 16 + 4 + sizes[dt.itemsize]
    if dt.kind not in "ui":
        raise TypeError(f"no typed-array tag for {dt}")
    ll = {1: 0, 2: 1, 4: 2, 8: 3}[dt.itemsize]
    if dt.itemsize == 1:
        return 72 if dt.kind == "i" else 64
    return 64 + (8 if dt.kind == "i" else 0) + 4 + ll

# ---------------------------------------------------------------- messages

@dataclass
class _Compressed:
    algorithm: str
    elem_size: int
    payload: bytes


@dataclass
class _Typed:
    dtype: np.dtype
    content: Any  # bytes or _Compressed


@dataclass
class EncodedArray:
    """A multi-dimensional array as it arrived: raw or compressed bytes, not yet decoded."""

    shape: tuple
    dtype: np.dtype
    payload: bytes
    compression: Optional[str] = None  # None, "bslz4" or "lz4"
    elem_size: int = 0
    column_major: bool = False

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def wire_bytes(self) -> int:
        return len(self.payload)

    def decode(self) -> np.ndarray:
        """The array (native byte order, C order); StreamError when the bytes do not fit."""
        n = self.nbytes
        if self.compression is None:
            raw = self.payload
            if len(raw) != n:
                raise StreamError(f"array of shape {self.shape} {self.dtype} needs {n} bytes, got {len(raw)}")
        else:
            raw = decompress(self.payload, self.compression, self.elem_size, n)
        a = np.frombuffer(raw, dtype=self.dtype)
        a = a.reshape(self.shape, order="F" if self.column_major else "C")
        if self.column_major or not self.dtype.isnative:
            a = np.ascontiguousarray(a, dtype=self.dtype.newbyteorder("="))
        return a


@dataclass
class StartMessage:
    series_id: int
    series_unique_id: str
    shape: Optional[tuple]  # (height, width) from image_size_y/x
    dtype: Optional[np.dtype]  # image_dtype
    number_of_images: Optional[int]
    geometry: Optional[BeamGeometry]
    geometry_error: Optional[str]
    pixel_mask: Optional[EncodedArray]
    channels: list
    saturation_value: Optional[int]
    detector_description: str = "detector"
    sensor_material: Optional[str] = None
    sensor_thickness_mm: Optional[float] = None
    count_time_s: Optional[float] = None
    frame_time_s: Optional[float] = None
    fields: dict = field(default_factory=dict, repr=False)  # every field as received
    type: str = "start"
    jungfrau_calibration: Optional[dict] = None  # energy_keV and EncodedArray pedestal, gain (3-D), mask (2-D)
    pixel_mask_error: Optional[str] = None  # why the message's pixel mask cannot be used
    underload_value: Optional[int] = None  # the stored frames' lowest trusted value (None: the writer's 0)

    def nxmx_options(self) -> dict:
        """The detector description for FrameWriter(nxmx=...)."""
        out = {"detector_name": self.detector_description}
        if self.sensor_material:
            out["sensor_material"] = self.sensor_material
        if self.sensor_thickness_mm:
            out["sensor_thickness_mm"] = self.sensor_thickness_mm
        if self.saturation_value is not None:
            out["saturation_value"] = self.saturation_value
        if self.underload_value is not None:
            out["underload_value"] = self.underload_value
        if self.count_time_s:
            out["count_time_s"] = self.count_time_s
        return out


@dataclass
class ImageMessage:
    series_id: int
    series_unique_id: str
    image_id: int
    data: dict  # channel -> EncodedArray
    fields: dict = field(default_factory=dict, repr=False)
    type: str = "image"

    @property
    def wire_bytes(self) -> int:
        return sum(a.wire_bytes for a in self.data.values())


@dataclass
class EndMessage:
    series_id: int
    series_unique_id: str
    fields: dict = field(default_factory=dict, repr=False)
    type: str = "end"


def _tag_hook(*args):
    """cbor2 tag hook (both call conventions): typed arrays, multi-dim arrays, 56500."""
    import cbor2

    tag = next(a for a in args if isinstance(a, cbor2.CBORTag))
    t, v = tag.tag, tag.value
    if t == TAG_COMPRESSED:
        if not (isinstance(v, Sequence) and len(v) == 3 and isinstance(v[0], str) and isinstance(v[1], int)
                and isinstance(v[2], bytes)):
            raise StreamError("tag 56500 needs [algorithm, element size, bytes]")
        if v[0] not in ALGORITHMS:
            raise StreamError(f"unknown compression {v[0]!r}")
        if v[0] == "bslz4" and v[1] not in (1, 2, 4, 8):
            raise StreamError(f"bslz4 element size {v[1]} is not 1, 2, 4 or 8")
        return _Compressed(v[0], int(v[1]), v[2])
    dtype = typed_array_dtype(t)
    if dtype is not None:
        if not isinstance(v, (bytes, _Compressed)):
            raise StreamError(f"typed array (tag {t}) holds {type(v).__name__}, not bytes")
        if isinstance(v, _Compressed) and v.algorithm == "bslz4" and v.elem_size != dtype.itemsize:
            raise StreamError(f"bslz4 element size {v.elem_size} for {dtype} elements")
        return _Typed(dtype, v)
    if t in (TAG_MULTI_DIM, TAG_MULTI_DIM_COLUMN_MAJOR):
        if not (isinstance(v, Sequence) and len(v) == 2 and isinstance(v[0], Sequence)):
            raise StreamError("multi-dimensional array needs [dimensions, typed array]")
        dims, content = v
        if not (1 <= len(dims) <= 8 and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims)):
            raise StreamError(f"bad array dimensions {list(dims)!r}")
        if not isinstance(content, _Typed):
            raise StreamError("multi-dimensional array without a typed array (classical arrays are not frames)")
        if math.prod(dims) > MAX_FRAME_PIXELS:
            raise StreamError(f"array of {math.prod(dims)} elements is larger than {MAX_FRAME_PIXELS}")
        c = content.content
        if isinstance(c, _Compressed):
            return EncodedArray(tuple(dims), content.dtype, c.payload, c.algorithm, c.elem_size,
                                t == TAG_MULTI_DIM_COLUMN_MAJOR)
        return EncodedArray(tuple(dims), content.dtype, c, None, 0, t == TAG_MULTI_DIM_COLUMN_MAJOR)
    return tag


def _short(v) -> str:
    """A value for an error message (a bignum of 400 digits is not printed whole)."""
    r = repr(v)
    return r if len(r) <= 60 else r[:40] + f"... ({len(r)} characters)"


def _uint(fields, key, required=True, hi=UINT64_MAX) -> Optional[int]:
    v = fields.get(key)
    if v is None:
        if required:
            raise StreamError(f"{fields.get('type')} message without {key}")
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
        raise StreamError(f"{key} must be an unsigned integer <= {hi}, not {_short(v)}")
    return v


def _number(key, v) -> float:
    """v as a finite float within FLOAT_RANGES[key] (bignums, NaN, infinities refused)."""
    lo, hi = FLOAT_RANGES[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise StreamError(f"{key} must be a number, not {type(v).__name__}")
    try:
        x = float(v)
    except OverflowError:
        raise StreamError(f"{key} {_short(v)} is out of range") from None
    if not (math.isfinite(x) and lo <= x <= hi and (x > lo or key not in _POSITIVE)):
        raise StreamError(f"{key} must be a finite number in {'(' if key in _POSITIVE else '['}{lo:g}, {hi:g}], "
                          f"not {_short(v)}")
    return x


def _float(fields, key) -> Optional[float]:
    v = fields.get(key)
    return None if v is None else _number(key, v)


def _image_dtype(f) -> Optional[np.dtype]:
    name = _text(f, "image_dtype")
    if name is None:
        return None
    base = name[:-2] if name.endswith(("le", "be")) else name
    if base not in IMAGE_DTYPES:
        raise StreamError(f"unknown image_dtype {_short(name)} (known: {', '.join(IMAGE_DTYPES)}, "
                          "optionally with le or be)")
    return IMAGE_DTYPES[base]  # frames are compared after decoding, in native order


def _image_shape(f) -> Optional[tuple]:
    w, h = _uint(f, "image_size_x", False, MAX_SIDE), _uint(f, "image_size_y", False, MAX_SIDE)
    if w is None and h is None:
        return None
    if w is None or h is None or w < 1 or h < 1 or w * h > MAX_FRAME_PIXELS:
        raise StreamError(f"image size {w} x {h} is not 1..{MAX_SIDE} per side and at most {MAX_FRAME_PIXELS} pixels")
    return (h, w)


def _check_array(name: str, a, ndim: int, shape: Optional[tuple] = None, kinds: str = "uif") -> "EncodedArray":
    """An EncodedArray of ndim dimensions (trailing ones `shape`) and an element kind in kinds."""
    if not isinstance(a, EncodedArray) or len(a.shape) != ndim:
        raise StreamError(f"{name} must be a {ndim}-D typed array")
    if a.dtype.kind not in kinds:
        raise StreamError(f"{name} of {a.dtype} elements (expected kind {kinds!r})")
    if shape is not None and tuple(a.shape[ndim - len(shape):]) != tuple(shape):
        raise StreamError(f"{name} has shape {a.shape}, expected {shape} pixels")
    return a


def _text(fields, key, default=None) -> Optional[str]:
    v = fields.get(key, default)
    if v is not None and not isinstance(v, str):
        raise StreamError(f"{key} must be a text string, not {type(v).__name__}")
    return v


def _thaw(v):
    """cbor2 may hand out frozen maps and tuples: plain dicts and lists."""
    if isinstance(v, Mapping):
        return {k: _thaw(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


def _geometry(f: dict) -> tuple:
    """(BeamGeometry, None) from the start message's fields, or (None, why not)."""
    try:
        distance_m = _float(f, "detector_distance")
        tr = f.get("detector_translation")
        if distance_m is None and tr is not None:
            if not (isinstance(tr, list) and len(tr) == 3):
                raise StreamError("detector_translation must be a list of 3 numbers")
            distance_m = _number("detector_distance", _number("detector_translation", tr[2]))
        wavelength = _float(f, "incident_wavelength")
        energy = _float(f, "incident_energy")
        if wavelength is None and energy is not None:
            wavelength = _number("incident_wavelength", 12398.4198 / energy)
        bx, by, px = _float(f, "beam_center_x"), _float(f, "beam_center_y"), _float(f, "pixel_size_x")
    except StreamError as e:
        return None, str(e)
    missing = [k for k, v in (("beam_center_x", bx), ("beam_center_y", by), ("detector distance", distance_m),
                              ("incident_wavelength", wavelength), ("pixel_size_x", px)) if v is None]
    if missing:
        return None, f"start message lacks {', '.join(missing)}"
    return BeamGeometry(beam_x=bx, beam_y=by, distance_mm=distance_m * 1e3, pixel_size_mm=px * 1e3,
                    wavelength_a=wavelength), None


def _pixel_mask(f: dict, channels: list, shape: Optional[tuple]) -> tuple:
    """(the pixel mask of the stored channel, None), or (None, why it is unusable): integer
    bits (NXmx) of the image size. Nothing is decoded here."""
    pm = f.get("pixel_mask")
    if pm is None or (isinstance(pm, Mapping) and not pm):
        return None, None
    try:
        if not isinstance(pm, Mapping):
            raise StreamError("pixel_mask must be a map from channel to array")
        name = channels[0] if channels and channels[0] in pm else next(iter(pm))
        return _check_array("pixel_mask", pm[name], 2, shape, kinds="ui"), None
    except StreamError as e:
        return None, str(e)


def _calibration(f: dict, shape: Optional[tuple]) -> Optional[dict]:
    """A JUNGFRAU calibration: energy_keV, pedestal and gain (3, h, w), mask (h, w) of the raw frames."""
    c = f.get("jungfrau_calibration")
    if c is None:
        return None
    if not isinstance(c, Mapping):
        raise StreamError("jungfrau_calibration must be a map")
    out = dict(c)
    out["energy_keV"] = _number("energy_keV", c.get("energy_keV"))
    ped = _check_array("jungfrau_calibration pedestal", c.get("pedestal"), 3, shape, kinds="uif")
    if ped.shape[0] != 3:
        raise StreamError(f"jungfrau_calibration pedestal has shape {ped.shape}, not (3, height, width)")
    _check_array("jungfrau_calibration gain", c.get("gain"), 3, ped.shape, kinds="uif")
    if c.get("mask") is not None:
        _check_array("jungfrau_calibration mask", c["mask"], 2, ped.shape[1:], kinds="uib")
    return out


def _start(f: dict) -> StartMessage:
    shape = _image_shape(f)
    channels = f.get("channels") or []
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise StreamError("channels must be a list of text strings")
    geometry, geometry_error = _geometry(f)
    mask, mask_error = _pixel_mask(f, channels, shape)
    thickness = _float(f, "sensor_thickness")
    sat = f.get("saturation_value")
    if isinstance(sat, int) and not isinstance(sat, bool):
        if not -INT64_MAX - 1 <= sat <= INT64_MAX:
            raise StreamError(f"saturation_value {_short(sat)} is out of range")
    else:
        sat = None
    return StartMessage(
        series_id=_uint(f, "series_id"), series_unique_id=_text(f, "series_unique_id", ""), shape=shape,
        dtype=_image_dtype(f), number_of_images=_uint(f, "number_of_images", False, INT64_MAX), geometry=geometry,
        geometry_error=geometry_error, pixel_mask=mask, pixel_mask_error=mask_error, channels=channels,
        saturation_value=sat, detector_description=_text(f, "detector_description") or "detector",
        sensor_material=_text(f, "sensor_material"),
        sensor_thickness_mm=thickness * 1e3 if thickness is not None else None,
        count_time_s=_float(f, "count_time"), frame_time_s=_float(f, "frame_time"), fields=f,
        jungfrau_calibration=_calibration(f, shape))


def _image(f: dict) -> ImageMessage:
    data = f.get("data")
    if not isinstance(data, Mapping) or not data:
        raise StreamError("image message without data")
    for name, a in data.items():
        if not isinstance(a, EncodedArray):
            raise StreamError(f"image channel {_short(name)} is not a typed multi-dimensional array")
        if len(a.shape) != 2:
            raise StreamError(f"image channel {_short(name)} has {len(a.shape)} dimensions, not 2")
        if not all(1 <= n <= MAX_SIDE for n in a.shape):
            raise StreamError(f"image channel {_short(name)} of shape {a.shape}: sides must be 1..{MAX_SIDE}")
    return ImageMessage(_uint(f, "series_id"), _text(f, "series_unique_id", ""), _uint(f, "image_id"), dict(data),
                        fields=f)


def parse_message(buf) -> StartMessage | ImageMessage | EndMessage:
    """One Stream V2 message from its bytes; StreamError for anything else."""
    import cbor2

    try:
        obj = cbor2.loads(bytes(buf), tag_hook=_tag_hook)
    except StreamError:
        raise
    except Exception as e:  # cbor2 errors, and a tag hook's error wrapped in them
        cause = e.__cause__ if isinstance(e.__cause__, StreamError) else e
        raise StreamError(f"not a CBOR message: {cause}") from None
    if isinstance(obj, type(None)) or not isinstance(obj, Mapping):
        raise StreamError(f"message is a CBOR {type(obj).__name__}, not a map")
    f = _thaw(obj)
    kind = f.get("type")
    try:
        if kind == "start":
            return _start(f)
        if kind == "image":
            return _image(f)
        if kind == "end":
            return EndMessage(_uint(f, "series_id"), _text(f, "series_unique_id", ""), fields=f)
    except StreamError:
        raise
    except Exception as e:  # a check missed above: still a bad message, never a crash
        raise StreamError(f"{kind} message unusable: {type(e).__name__}: {e}") from None
    raise StreamError(f"unknown message type {_short(kind)}")


def _tagged_array(a: np.ndarray, compression: Optional[str] = None, payload: Optional[bytes] = None):
    a = np.asarray(a)
    dt = a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype
    if payload is None:
        c = np.ascontiguousarray(a, dtype=dt)
        payload = c.tobytes() if compression is None else compress(c, compression)
    return _declared_array(a.shape, dt, payload, compression)


def _declared_array(shape, dtype, payload: bytes, compression: Optional[str] = None):
    """The CBOR of an array as declared: shape and (little-endian) dtype, raw or compressed
    bytes taken as they are (tests forge arrays whose bytes do not hold what they declare)."""
    import cbor2

    dt = np.dtype(dtype)
    content = payload if compression is None else cbor2.CBORTag(
        TAG_COMPRESSED, [compression, dt.itemsize if compression == "bslz4" else 0, payload])
    return cbor2.CBORTag(TAG_MULTI_DIM, [list(shape), cbor2.CBORTag(typed_array_tag(dt), content)])


def _dumps(fields: dict) -> bytes:
    import cbor2

    return cbor2.dumps(cbor2.CBORTag(TAG_SELF_DESCRIBED, fields))


def encode_start(shape, dtype, geometry: Optional[BeamGeometry] = None, *, series_id: int = 1,
                 series_unique_id: Optional[str] = None, number_of_images: int = 0, pixel_mask=None,
                 channel: str = "threshold_1", detector_description: str = "redml simulated detector",
                 saturation_value: Optional[int] = None, sensor_material: str = "Si",
                 sensor_thickness_mm: float = 0.32, count_time_s: float = 0.001, frame_time_s: float = 0.001,
                 compression: Optional[str] = None, user_data: Any = None,
                 jungfrau_calibration: Optional[dict] = None) -> bytes:
    """A start message (DECTRIS fields; lengths in metres; also Jungfraujoch's
    detector_distance). pixel_mask: uint32 NXmx bits, nonzero = bad. jungfrau_calibration:
    redml_reduce.jungfrau.calibration.Calibration.to_dict() when the images are raw JUNGFRAU words (sent
    once per series, as Jungfraujoch does; the receiver converts the images to photons)."""
    h, w = (int(v) for v in shape)
    now = _dt.datetime.now(_dt.timezone.utc)
    f = {"type": "start", "series_id": int(series_id),
         "series_unique_id": series_unique_id or f"redml-{uuid.uuid4().hex[:12]}",
         "arm_date": now, "channels": [channel], "count_time": float(count_time_s),
         "detector_description": detector_description, "detector_serial_number": "SIM-0",
         "frame_time": float(frame_time_s), "image_dtype": np.dtype(dtype).name,
         "image_size_x": w, "image_size_y": h, "number_of_images": int(number_of_images),
         "sensor_material": sensor_material, "sensor_thickness": float(sensor_thickness_mm) / 1e3,
         "countrate_correction_enabled": False, "flatfield_enabled": False,
         "virtual_pixel_interpolation_enabled": False, "user_data": user_data}
    if geometry is not None:
        f.update({"beam_center_x": float(geometry.beam_x), "beam_center_y": float(geometry.beam_y),
                  "detector_distance": geometry.distance_mm / 1e3,
                  "detector_translation": [0.0, 0.0, geometry.distance_mm / 1e3],
                  "incident_wavelength": float(geometry.wavelength_a),
                  "incident_energy": 12398.4198 / geometry.wavelength_a,
                  "pixel_size_x": geometry.pixel_size_mm / 1e3, "pixel_size_y": geometry.pixel_size_mm / 1e3})
    if saturation_value is not None:
        f["saturation_value"] = int(saturation_value)
    f["pixel_mask_enabled"] = pixel_mask is not None
    if pixel_mask is not None:
        f["pixel_mask"] = {channel: _tagged_array(np.asarray(pixel_mask).astype(np.uint32), compression)}
    if jungfrau_calibration is not None:
        c = jungfrau_calibration
        f["jungfrau_calibration"] = {"energy_keV": float(c["energy_keV"]),
                                     **{k: _tagged_array(np.asarray(c[k]), compression)
                                        for k in ("pedestal", "gain", "mask") if c.get(k) is not None}}
        if c.get("geometry") is not None:  # the module placement: the receiver assembles the images by it
            g = c["geometry"]
            f["jungfrau_calibration"]["geometry"] = {"modules": np.asarray(g["modules"]).tolist(),
                                                     "shape": [int(v) for v in g["shape"]]}
    return _dumps(f)


def encode_image(frame: np.ndarray, image_id: int, *, series_id: int = 1, series_unique_id: str = "",
                 channel: str = "threshold_1", compression: Optional[str] = None, payload: Optional[bytes] = None,
                 start_time: Optional[float] = None, exposure_s: float = 0.001, user_data: Any = None) -> bytes:
    """An image message; compression "bslz4"/"lz4" compresses here unless `payload` (the
    compressed bytes of this frame) is given."""
    base = 10**7  # time base of the rationals (100 ns)
    t = time.time() if start_time is None else start_time
    start = int(round(t * base))
    stop = start + int(round(exposure_s * base))
    f = {"type": "image", "series_id": int(series_id), "series_unique_id": series_unique_id, "image_id": int(image_id),
         "real_time": [stop - start, base], "start_time": [start, base], "stop_time": [stop, base],
         "data": {channel: _tagged_array(frame, compression, payload)}, "user_data": user_data}
    return _dumps(f)


def encode_end(series_id: int = 1, series_unique_id: str = "") -> bytes:
    return _dumps({"type": "end", "series_id": int(series_id), "series_unique_id": series_unique_id})
