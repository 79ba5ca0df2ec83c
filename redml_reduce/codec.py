"""Standalone encoder/decoder: the exact bytes the HDF5 filter stores for one frame.

Use these with direct chunk write at acquisition::

    chunk = redml_reduce.encode(frame, q=1.0)
    dset.id.write_direct_chunk((i, 0, 0), chunk)
    frame_back = dset[i]            # decoded by the filter
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Optional, Union

import numpy as np

from . import _core
from .arrays import SUPPORTED_DTYPES, as_frame, as_map, check_range
from .lattice.predict import LatticeRegion
from .spots import MARKERS as _MARKERS
from .spots import PEAK_DTYPE, FinderSettings

__all__ = ["encode", "encode_with_spots", "decode", "inspect", "exact_mask", "lattice_records", "background_model", "error_bound", "per_pixel", "RedmlError", "CodecSettings", "SUPPORTED_DTYPES",
           "SETTINGS", "Setting", "as_frame", "resolve_settings"]


_MODES = {"lossless": 0, "quantized": 1, "sparse": 2}
_CODECS = {"lz4": 1, "zstd": 2, "rans": 3}
_SHUFFLES = {"none": 0, "byte": 1, "bit": 2}
_RECONS = {"midpoint": 0, "mean": 2, "draw": 3}  # quantized mode (docs/format.md, "Reconstruction")
_RECON_NAMES = ("dither", "poisson", "mean", "draw")  # as stored in a chunk
MAX_TILE = 1024  # the encoder's largest tile (kMaxTile in csrc/container.h: one tile^2 buffer per thread)
ENCODE_Q_RANGE = (1e-6, 1e6)  # the q the encoder accepts: outside it, use q=0 (lossless) or q="sparse"


class RedmlError(ValueError):
    """A chunk is corrupt, truncated, or was written by a newer format version."""


QLike = Union[float, int, str]

_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Setting:
    """One field of CodecSettings, as every representation of the settings stores it.

    name: the field, and its key in configurations (numcodecs, zarr v3, the recompression
        manifest). slot: its index in the HDF5 filter's cd_values (docs/format.md, "HDF5
        filter"; a format contract). encoding: how the slot holds it: "f32" (IEEE-754 bit
        pattern), "i32" (two's complement), "u16", "u32", "bool", or a dict name -> code.
    lo, hi, open_low: the range of a number. modes: where the field has an effect; in the
        other modes it takes its default (recon and sparse_noise share slot 6).
    special: (name, number) pairs: names a number field also takes, stored as that number
        ("auto" read noise: -1.0).
    """

    name: str
    slot: int
    encoding: object
    lo: float = 0
    hi: float = math.inf
    open_low: bool = False
    modes: tuple = ("lossless", "quantized", "sparse")
    special: tuple = ()

    def to_word(self, value) -> int:
        """The field's 32-bit cd_values word."""
        value = dict(self.special).get(value, value) if isinstance(value, str) else value
        if isinstance(self.encoding, dict):
            return self.encoding[value]
        if self.encoding == "f32":
            return int(np.array(value, dtype="<f4").view("<u4"))
        return int(value) & 0xFFFFFFFF

    def from_word(self, word: int):
        """The field's value from its cd_values word (ValueError if no value has that word)."""
        word = int(word)
        if isinstance(self.encoding, dict):
            names = {v: k for k, v in self.encoding.items()}
            if word not in names:
                raise ValueError(f"unknown redml {self.name} code {word} in cd_values")
            return names[word]
        if self.encoding == "f32":  # the shortest decimal that gives the float32 (0.3, not 0.30000001...)
            value = float(str(np.array(word, dtype="<u4").view("<f4")[()]))
            names = {number: name for name, number in self.special}
            return names.get(value, value)
        if self.encoding == "i32":
            return word - (1 << 32) if word >= 1 << 31 else word
        if self.encoding == "bool":
            if word not in (0, 1):
                raise ValueError(f"redml {self.name} must be 0 or 1 in cd_values, not {word}")
            return bool(word)
        return word

    def to_json(self, value):
        """The field's value in a JSON configuration."""
        if isinstance(self.encoding, dict) or value in dict(self.special):
            return str(value)
        if self.encoding == "f32":
            return float(value)
        return bool(value) if self.encoding == "bool" else int(value)

    def check(self, value) -> None:
        if isinstance(value, str) and value in dict(self.special):
            return
        if isinstance(self.encoding, dict):
            if value not in self.encoding:
                raise ValueError(f"{self.name} must be one of {sorted(self.encoding)}, not {value!r}")
        elif self.encoding == "bool":
            if not isinstance(value, (bool, np.bool_, int, np.integer)) or value not in (0, 1):
                raise TypeError(f"{self.name} must be True or False, not {value!r}")
        else:
            hi = min(self.hi, _F32_MAX) if self.encoding == "f32" else self.hi  # as the filter stores it
            check_range(self.name, value, self.lo, hi, integer=self.encoding != "f32", open_low=self.open_low)


# The one table of the settings: CodecSettings' validation, its HDF5 cd_values (and the
# plugin's parser, csrc/h5filter.cpp, which must agree), and its configuration for numcodecs,
# zarr v3 metadata, zero-copy views and the recompression manifest all come from it.
# Slot 0 holds the layout version (CD_LAYOUT) and slot 1 the mode, which follows from q;
# set_local appends 14-16 (dtype, height, width).
SETTINGS = (
    Setting("q", 2, "f32", open_low=True, modes=("quantized",)),
    Setting("codec", 3, _CODECS),
    Setting("level", 4, "i32", lo=-7, hi=22),
    Setting("shuffle", 5, _SHUFFLES),
    Setting("recon", 6, _RECONS, modes=("quantized",)),
    Setting("sparse_noise", 6, "bool", modes=("sparse",)),
    Setting("tile", 7, "u16", lo=1, hi=65535),
    Setting("gain", 8, "f32", open_low=True),
    Setting("mu_min", 9, "f32"),
    Setting("roi_snr", 10, "f32", open_low=True),
    Setting("roi_margin", 11, "u16", hi=65535),
    Setting("seed", 12, "u32", hi=2**32 - 1),
    Setting("block_elems", 13, "u32", lo=256, hi=1 << 24),
    # Integrating detectors, after set_local's three values (written only when not default).
    # sparse mode: for its ROI's spot finder, its cut above the model and its noisy background (stored in
    # sparse chunks of integrating data)
    Setting("read_noise", 17, "f32", modes=("quantized", "sparse"), special=(("auto", -1.0),)),
    Setting("markers", 18, _MARKERS),
)
CD_LAYOUT = 1
CD_MODE_SLOT = 1
CD_USER_VALUES = 14  # set_local appends dtype code, height, width
CD_ALL_VALUES = 17
CD_MAX_VALUES = 19  # with the optional slots 17-18 (then 14-16 are placeholders set_local overwrites)


@dataclass(frozen=True)
class CodecSettings:
    """Validated codec settings, shared by encode() and the HDF5 filter helper.

    q: the one knob. 0 = lossless; q > 0 = background quantized with a step of q Poisson
       sigmas (every background pixel within q*sigma/2, unbiased); "sparse" (or math.inf)
       = background replaced by the stored model.
    recon: how quantized background decodes. "midpoint": the dithered bin's midpoint
       (unbiased for any signal; counts below the half-step stay exact). "mean" / "draw"
       (integer photon counts, gain 1): bins of up to q*sigma/2 + 1 counts, decoded as the
       mean of / a seeded draw from the background model's Poisson distribution within the
       bin (keeps the background's statistics at any count; a chunk of either decodes as
       the other too). Integrating data (markers, read_noise; integer or float, any gain):
       from Poisson photons convolved with the Gaussian read noise.
    sparse_noise: sparse mode: decode with seeded Poisson noise around the model, plus the
       read noise on integrating data (the chunk stores it). True by default: the noise
       statistics spot finders and integration rely on (DIALS's background estimate of the
       smooth model comes out high); False: the smooth dithered model (for viewing).
    markers: which values are the detector's markers, kept exactly and left out of the model:
       "negative" (photon counters: every negative value, the dtype's maximum, NaN/inf);
       "extremes" (integrating detectors, whose pedestal-subtracted values are negative as
       often as not: only the dtype's maximum and signed minimum, NaN/inf); "gaps"
       (extremes, and -1 and -2 as Pilatus-style gaps).
    read_noise: integrating detectors (markers other than "negative"), quantized mode: the
       Gaussian read noise in data units, sigma^2 = gain^2*max(mean/gain, mu_min) +
       read_noise^2 (ADU: gain = ADU per photon; float photons: gain 1); "auto": estimated
       from each frame (docs/format.md). recon="mean"/"draw" on integrating data need it > 0
       or "auto"; mu_min=0 gives the plain sigma^2 = gain*mean + read_noise^2.

    A field a mode ignores takes its default (recon outside quantized mode, sparse_noise
    outside sparse mode; q=math.inf becomes "sparse"), so settings that write the same
    chunks compare equal and every representation (SETTINGS) gives them back.

    Construction accepts the format's full range (what data written earlier, or by other
    writers, may hold); what this encoder supports on top (tile <= MAX_TILE, q within
    ENCODE_Q_RANGE) is checked when encoding: check_encodable(), called by core_kwargs()
    and cd_values().
    """

    q: QLike = 0.0
    codec: str = "rans"
    level: int = 1
    shuffle: Optional[str] = None  # None: "byte" for rans, "bit" for lz4/zstd
    gain: float = 1.0
    mu_min: float = 1.0
    tile: int = 32
    roi_snr: float = 3.0
    roi_margin: int = 2
    seed: int = 0x5EED1234
    block_elems: int = 1 << 18
    sparse_noise: bool = True
    recon: str = "midpoint"
    read_noise: Union[float, str] = 0.0
    markers: str = "negative"

    def __post_init__(self):
        q = self.q
        if isinstance(q, str):
            if q != "sparse":
                raise ValueError(f"q must be a number >= 0 or 'sparse', not {q!r}")
        elif isinstance(q, bool) or not isinstance(q, (int, float, np.integer, np.floating)):
            raise TypeError(f"q must be a number >= 0 or 'sparse', not {type(q).__name__}")
        elif math.isnan(q) or q < 0:
            raise ValueError(f"q must be a number >= 0 or 'sparse', not {q!r}")
        elif math.isinf(q):
            object.__setattr__(self, "q", "sparse")
        elif q > _F32_MAX:
            raise ValueError(f"q must be at most {_F32_MAX:g} (a float32) or 'sparse', not {q!r}")
        if self.codec in _CODECS and self.shuffle is None:
            object.__setattr__(self, "shuffle", "byte" if self.codec == "rans" else "bit")
        for s in SETTINGS:
            if s.name == "q":
                continue
            s.check(getattr(self, s.name))
            if self.mode not in s.modes:
                object.__setattr__(self, s.name, self.__dataclass_fields__[s.name].default)
        if self.codec == "rans" and self.shuffle == "bit":
            raise ValueError("the rans codec codes byte planes: use shuffle='byte' or 'none'")
        if self.block_elems % 8:
            raise ValueError("block_elems must be a multiple of 8")
        integrating = self.markers != "negative"
        if self.read_noise != 0 and not integrating:
            raise ValueError("read_noise models integrating detectors: set markers='extremes' or 'gaps' "
                             "(negative values are noise there)")
        if self.recon != "midpoint" and self.gain != 1 and not integrating:
            raise ValueError("recon='mean' and 'draw' model photon counts: gain must be 1 "
                             "(integrating data: set markers and read_noise)")
        if self.recon != "midpoint" and integrating and self.read_noise == 0:
            raise ValueError("recon='mean' and 'draw' on integrating data need read_noise > 0 or 'auto'")

    @property
    def mode(self) -> str:
        if self.q == "sparse":
            return "sparse"
        return "quantized" if self.q > 0 else "lossless"

    @property
    def q_value(self) -> float:
        return float(self.q) if self.mode == "quantized" else 0.0

    def check_encodable(self) -> None:
        """Refuse what the format can hold but this encoder does not write (ValueError)."""
        lo, hi = ENCODE_Q_RANGE
        if self.mode == "quantized" and self.q_value > hi:
            raise ValueError(f"q above {hi:g} is meaningless; use q='sparse'")
        if self.mode == "quantized" and self.q_value < lo:
            raise ValueError(f"q below {lo:g} is meaningless; use q=0 (lossless)")
        if self.tile > MAX_TILE:
            raise ValueError(f"tile must be in [1, {MAX_TILE}] to encode (the format holds up to 65535 "
                             f"and decodes them), not {self.tile}")

    def core_kwargs(self) -> dict:
        """The encoder's arguments (ValueError if it does not write these settings)."""
        self.check_encodable()
        return dict(mode=_MODES[self.mode], q=self.q_value, gain=float(self.gain), mu_min=float(self.mu_min),
                    codec=_CODECS[self.codec], level=int(self.level), shuffle=_SHUFFLES[self.shuffle],
                    recon=self._core_recon(), tile=int(self.tile),
                    roi_snr=float(self.roi_snr), roi_margin=int(self.roi_margin), seed=int(self.seed),
                    block_elems=int(self.block_elems), markers=_MARKERS[self.markers],
                    read_noise=-1.0 if self.read_noise == "auto" else float(self.read_noise))

    def _core_recon(self) -> int:
        if self.mode == "sparse":
            return 1 if self.sparse_noise else 0
        return _RECONS[self.recon] if self.mode == "quantized" else 0

    def cd_values(self) -> tuple:
        """The filter's user cd_values (see docs/format.md, 'HDF5 filter'), to write with:
        ValueError if the encoder does not write these settings."""
        self.check_encodable()
        cd = [0] * CD_MAX_VALUES
        cd[0], cd[CD_MODE_SLOT] = CD_LAYOUT, _MODES[self.mode]
        for s in SETTINGS:
            if self.mode in s.modes:
                cd[s.slot] = s.to_word(self.q_value if s.name == "q" else getattr(self, s.name))
        # the optional slots only where they differ from their defaults (0): other datasets
        # keep the 14 values every plugin version reads
        return tuple(cd if any(cd[CD_ALL_VALUES:]) else cd[:CD_USER_VALUES])

    @classmethod
    def from_cd_values(cls, cd) -> "CodecSettings":
        """The settings of a redml filter pipeline entry (the cd_values of an HDF5 dataset's
        filter, as the plugin reads them): missing trailing values take their defaults,
        values 14-16 (set_local's dtype and shape) are not settings."""
        cd = [int(v) for v in cd]
        if not cd or cd[0] != CD_LAYOUT:
            raise ValueError(f"unknown redml cd_values layout {cd[:1]} (this version reads layout {CD_LAYOUT})")
        if len(cd) > CD_MAX_VALUES:
            raise ValueError(f"redml cd_values hold at most {CD_MAX_VALUES} values, not {len(cd)}")
        # user values, set_local's three (not settings), the optional slots (default 0)
        full = cd[:CD_USER_VALUES] + list(_DEFAULT_CD[len(cd):]) + [0] * (CD_MAX_VALUES - CD_USER_VALUES)
        full[CD_ALL_VALUES:len(cd)] = cd[CD_ALL_VALUES:]
        modes = {v: k for k, v in _MODES.items()}
        if full[CD_MODE_SLOT] not in modes:
            raise ValueError(f"unknown redml mode {full[CD_MODE_SLOT]} in cd_values")
        mode = modes[full[CD_MODE_SLOT]]
        used = [s for s in SETTINGS if mode in s.modes]
        for slot in {s.slot for s in SETTINGS} - {s.slot for s in used}:
            if full[slot] != 0:  # what cd_values() writes there, and all the plugin accepts
                raise ValueError(f"redml cd_values: value {slot} must be 0 in {mode} mode, not {full[slot]}")
        kw = {s.name: s.from_word(full[s.slot]) for s in used}
        if mode == "sparse":
            kw["q"] = "sparse"
        elif mode == "quantized" and kw["q"] <= 0:
            raise ValueError("redml cd_values: quantized mode needs q > 0")
        return cls(**kw)

    def to_config(self) -> dict:
        """The JSON-safe configuration: every field under its name (q: "sparse" or a number)."""
        config = {s.name: s.to_json(getattr(self, s.name)) for s in SETTINGS if s.name != "q"}
        return {"q": "sparse" if self.mode == "sparse" else self.q_value, **config}

    @classmethod
    def from_config(cls, config, ignore=()) -> "CodecSettings":
        """Settings from a configuration (to_config's, or any subset of its keys: missing
        ones take their defaults); an unknown key is refused, except those in ignore (the
        caller's own keys). Accepts the format's full range (see check_encodable)."""
        if not isinstance(config, Mapping):
            raise TypeError(f"a redml configuration is a dict, not {type(config).__name__}")
        unknown = sorted(set(config) - {s.name for s in SETTINGS} - set(ignore))
        if unknown:
            raise ValueError(f"unknown redml configuration keys: {', '.join(map(str, unknown))}")
        return cls(**{k: v for k, v in config.items() if k not in ignore})


_DEFAULT_CD = CodecSettings().cd_values()  # what the plugin takes for missing trailing values


def encode(frame: np.ndarray, q: QLike = 0.0, *, roi=None, mask=None, nthreads: int = 0,
           settings: Optional[CodecSettings] = None, **fields) -> bytes:
    """Encodes one 2-D frame of photons (or any supported values) into one redml chunk
    (format v1, docs/format.md). redml_reduce.encode (redml_reduce.pipeline) is this with
    ROI sources ("ml", "union") and raw JUNGFRAU frames on top.

    frame: 2-D array of uint16, int16, int32, uint32 or float32 (other byte orders are
        converted; other dtypes are refused, never cast silently).
    q: 0 lossless, > 0 quantized background (|error| <= q*sigma/2, unbiased), "sparse".
    roi: None (the built-in spot rule, as the HDF5 filter), a boolean map of pixels to
        keep exactly, or a redml_reduce.lattice.LatticeRegion (its crystals' predicted discs
        besides its base map or the built-in rule, stored as the crystal models).
    mask: optional boolean map of bad pixels: kept exactly, ignored by the model.
    nthreads: 0 = REDML_NUM_THREADS or all cores.
    settings: a CodecSettings (then q and fields are not given); fields: further
        CodecSettings fields (codec, level, shuffle, gain, tile, ...).
    """
    s = resolve_settings(settings, q, fields)
    arr = as_frame(frame)
    check_range("nthreads", nthreads, 0, 4096, integer=True)
    if isinstance(roi, str):
        raise TypeError(f"roi={roi!r}: ROI sources are resolved by redml_reduce.encode (redml_reduce.pipeline); "
                        "codec.encode takes None, a boolean map or a LatticeRegion")
    lattice = None
    if isinstance(roi, LatticeRegion):
        lattice = roi.records() if roi.crystals else None
        roi = roi.base
    return _core.encode(arr, as_map(roi, arr.shape, "roi"), as_map(mask, arr.shape, "mask"),
                        nthreads=nthreads, lattice=lattice, **s.core_kwargs())


def encode_with_spots(frame: np.ndarray, *, mask=None, nthreads: int = 0, settings: Optional[CodecSettings] = None,
                      finder=None):
    """(chunk, peaks) of one frame, from one spot search: peaks are what
    redml_reduce.find_spots(frame, mask, settings=finder) returns, and the chunk is, byte for
    byte, encode(frame, roi=roi_mask(its spot_mask, settings.roi_margin), mask=mask,
    settings=settings). finder: a redml_reduce.spots.FinderSettings (default: its defaults with
    the codec settings' gain, markers and read noise)."""
    s = resolve_settings(settings, 0.0, {})
    f = finder if finder is not None else FinderSettings(gain=s.gain, markers=s.markers, read_noise=s.read_noise)
    if not isinstance(f, FinderSettings):
        raise TypeError(f"finder must be a FinderSettings, not {type(f).__name__}")
    arr = as_frame(frame)
    check_range("nthreads", nthreads, 0, 4096, integer=True)
    chunk, raw = _core.encode(arr, None, as_map(mask, arr.shape, "mask"), nthreads=nthreads,
                              spots=f.core_fields(), **s.core_kwargs())
    return chunk, np.frombuffer(raw, dtype=PEAK_DTYPE).copy()


def resolve_settings(settings: Optional[CodecSettings], q, fields: dict) -> CodecSettings:
    """The settings of one encode call: a CodecSettings given whole, or q and its fields."""
    if settings is None:
        return CodecSettings(q=q, **fields)
    if not isinstance(settings, CodecSettings):
        raise TypeError(f"settings must be a CodecSettings, not {type(settings).__name__}")
    if fields or q not in (0, 0.0):
        raise ValueError("give settings= or q and the settings' fields, not both")
    return settings


def decode(chunk, *, sparse_noise: Optional[bool] = None, recon: Optional[str] = None, nthreads: int = 0) -> np.ndarray:
    """Decodes one redml chunk (bytes-like) into a 2-D array of its original dtype.

    sparse_noise: for sparse chunks, override the stored reconstruction (True: seeded
        Poisson noise around the model; False: the model, unbiasedly rounded).
    recon: for chunks written with recon="mean" or "draw", decode with the other one.
    Raises RedmlError for corrupt, truncated or foreign data.
    """
    if recon is not None and sparse_noise is not None:
        raise ValueError("give sparse_noise or recon, not both")
    if recon is not None:
        if recon not in ("mean", "draw"):
            raise ValueError(f"recon override must be 'mean' or 'draw', not {recon!r}")
        code = _RECONS[recon]
    else:
        code = -1 if sparse_noise is None else int(bool(sparse_noise))
    try:
        return _core.decode(_as_buffer(chunk), code, nthreads)
    except ValueError as e:
        raise RedmlError(str(e)) from None


def inspect(chunk) -> dict:
    """Header fields of a chunk (dtype, shape, mode, q, ...) without decoding pixels;
    "lattice_crystals": how many crystals' predicted discs it keeps exact (0: none)."""
    try:
        info = _core.inspect(_as_buffer(chunk))
        info["lattice_crystals"] = len(_core.lattice_records(_as_buffer(chunk))[1])
    except ValueError as e:
        raise RedmlError(str(e)) from None
    info["mode"] = {v: k for k, v in _MODES.items()}[info["mode"]]
    info["codec"] = {v: k for k, v in _CODECS.items()}[info["codec"]]
    info["recon"] = _RECON_NAMES[info["recon"]]
    return info


def lattice_records(chunk) -> tuple:
    """The crystals a chunk's lattice section stores (docs/format.md, "Lattice region"), as
    LatticeRegion.records() gives them: (float64 (n, 21) array, n centring letters); n = 0
    for a chunk without one."""
    try:
        return _core.lattice_records(_as_buffer(chunk))
    except ValueError as e:
        raise RedmlError(str(e)) from None


def exact_mask(chunk) -> np.ndarray:
    """Boolean map of the pixels a chunk stores exactly (ROI, masked, special values)."""
    try:
        return _core.exact_mask(_as_buffer(chunk))
    except ValueError as e:
        raise RedmlError(str(e)) from None


def background_model(chunk) -> dict:
    """The chunk's background model: {"tile": edge in pixels, "mean": (rows, cols) tile
    means, "step": (rows, cols) quantization steps, "sigma": per-pixel function}.

    Each background pixel (not in exact_mask) is within step/2 of its original value;
    step <= q * sigma + 1 for integer data (odd steps) with sigma the Poisson noise of the
    tile mean, so the documented bound |error| <= q*sigma/2 holds.
    """
    try:
        m = _core.model(_as_buffer(chunk))
        info = _core.inspect(_as_buffer(chunk))
    except ValueError as e:
        raise RedmlError(str(e)) from None
    m["tile"] = info["tile"]
    return m


def error_bound(chunk) -> np.ndarray:
    """The stated bound per pixel of a quantized chunk: q*sigma/2, sigma the Poisson noise
    (gain * sqrt(max(mean/gain, mu_min))) of the stored tile mean, with the read noise for
    integrating data (markers, read_noise: then what the stored steps allow). Background
    pixels decode within it; exact pixels (exact_mask) decode exactly."""
    info = inspect(chunk)
    m = background_model(chunk)
    mean = per_pixel(m["mean"].astype(np.float64), m["tile"], info["shape"])
    gain, mu_min = float(info["gain"]), float(info["mu_min"])
    poisson = info["q"] * gain * np.sqrt(np.maximum(mean / gain, mu_min)) / 2
    # Integrating data: sigma has a read noise (not stored with the midpoint), so the bound
    # is read from the stored steps, which never exceed q*sigma/2 of photon counts.
    step = per_pixel(m["step"].astype(np.float64), m["tile"], info["shape"])
    bins, is_float = info["recon"] in ("mean", "draw"), np.dtype(info["dtype"]).kind == "f"
    of_step = step if is_float and bins else (step / 2 if is_float else (step - 1 if bins else (step - 1) / 2))
    return np.maximum(poisson, of_step) if info["mode"] == "quantized" else poisson


def per_pixel(tile_values: np.ndarray, tile: int, shape) -> np.ndarray:
    """Expands a per-tile array (rows, cols) to the frame's shape."""
    full = np.repeat(np.repeat(tile_values, tile, axis=0), tile, axis=1)
    return full[: shape[0], : shape[1]]


def _as_buffer(chunk):
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return chunk
    if isinstance(chunk, np.ndarray):
        return np.ascontiguousarray(chunk).view(np.uint8).reshape(-1)
    raise TypeError(f"chunk must be bytes-like, not {type(chunk).__name__}")
