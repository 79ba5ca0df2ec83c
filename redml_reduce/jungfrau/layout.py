"""The JUNGFRAU detector: raw words (gain bits + ADC), modules of 512 x 1024 pixels in chips of
256 x 256, and the layout of modules in an assembled image (ModuleLayout: module positions,
double-size chip-border pixels, gaps).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import numpy as np

__all__ = ["ModuleLayout", "markers", "photon_dtype", "MODULE_SHAPE", "ASSEMBLED_MODULE_SHAPE", "CHIP", "STATUS", "TYPICAL_GAIN",
           "TYPICAL_PEDESTAL", "ADC_MAX", "OVERLOAD_WORD", "ERROR_WORD", "GAIN_BITS"]

MODULE_SHAPE = (512, 1024)
ASSEMBLED_MODULE_SHAPE = (514, 1030)  # chip-border pixels are double size: one more row / column per border
CHIP = 256
ADC_MAX = 0x3FFF
OVERLOAD_WORD = 0xC000
ERROR_WORD = 0xFFFF
GAIN_BITS = (0, 1, 3)  # the top two bits of a word in G0, G1, G2
STATUS = ("g0", "g1", "g2", "saturated", "masked", "invalid_gain", "overload", "error")  # redml_jf_status
TYPICAL_GAIN = (41.0, -1.44, -0.11)  # ADU/keV, G0 G1 G2
TYPICAL_PEDESTAL = (3000.0, 13000.0, 14000.0)  # ADU

def markers(dtype) -> tuple[int, int]:
    """(masked, saturated) marker values of a photon dtype: its minimum and maximum."""
    info = np.iinfo(photon_dtype(dtype))
    return int(info.min), int(info.max)


def photon_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.int16), np.dtype(np.int32)):
        raise TypeError(f"photons are int16 or int32, not {dt}")
    return dt



def _expand(n_raw: int, chips: int) -> tuple[np.ndarray, np.ndarray]:
    """Assembled position of each raw row (or column) and the direction (+1/-1, 0 if none)
    of the second half of a chip-border pixel (mirrors redml_jf_expand)."""
    raw = np.arange(n_raw)
    chip, j = raw // CHIP, raw % CHIP
    extra = np.where((j == CHIP - 1) & (chip < chips - 1), 1, np.where((j == 0) & (chip > 0), -1, 0))
    return raw + 2 * chip, extra


@dataclass(eq=False)
class ModuleLayout:
    """Where the modules of a JUNGFRAU go in the assembled image.

    modules: (n, 6) int32 rows (origin_y, origin_x, fast_y, fast_x, slow_y, slow_x): module
    k's assembled pixel (r, c), 0 <= r < 514, 0 <= c < 1030, lands at output
    (origin_y + r*slow_y + c*fast_y, origin_x + r*slow_x + c*fast_x). Module k holds raw rows
    [512 k, 512 (k+1)) of the raw frame. shape: the assembled image (height, width). Within a
    module the chip-border pixels (double size, quadruple at chip corners) are split over
    two (four) output pixels, conserving the total; pixels no module covers are gaps.
    """

    modules: np.ndarray
    shape: tuple

    def __post_init__(self):
        self.modules = np.ascontiguousarray(self.modules, dtype=np.int32).reshape(-1, 6)
        self.shape = tuple(int(v) for v in self.shape)
        if len(self.shape) != 2 or min(self.shape) < 1 or len(self.modules) < 1:
            raise ValueError("a geometry needs at least one module and a 2-D image shape")
        for k, (oy, ox, fy, fx, sy, sx) in enumerate(self.modules):
            units = {(0, 1), (0, -1), (1, 0), (-1, 0)}
            if (fy, fx) not in units or (sy, sx) not in units or fy * sy + fx * sx != 0:
                raise ValueError(f"module {k}: fast and slow must be perpendicular unit steps")
        cover = np.bincount(self._outputs().ravel(), minlength=self.shape[0] * self.shape[1])
        if cover.max() > 1:
            raise ValueError("modules overlap")

    @classmethod
    def grid(cls, n_modules: int, modules_per_row: int = 2, gap_x: int = 8, gap_y: int = 36,
             transpose: bool = False) -> "ModuleLayout":
        """Modules in rows of `modules_per_row` (module 0 top left, row-major), `gap_x` pixels
        between neighbours in a row and `gap_y` between rows (Jungfraujoch's layout);
        transpose: the whole image transposed (modules' fast axis vertical)."""
        if n_modules < 1 or modules_per_row < 1 or gap_x < 0 or gap_y < 0:
            raise ValueError("n_modules and modules_per_row must be >= 1, gaps >= 0")
        rows = -(-n_modules // modules_per_row)
        mh, mw = ASSEMBLED_MODULE_SHAPE
        mods = [(k // modules_per_row * (mh + gap_y), k % modules_per_row * (mw + gap_x), 0, 1, 1, 0)
                for k in range(n_modules)]
        shape = (rows * mh + (rows - 1) * gap_y, min(n_modules, modules_per_row) * (mw + gap_x) - gap_x)
        if transpose:
            mods = [(ox, oy, fx, fy, sx, sy) for oy, ox, fy, fx, sy, sx in mods]
            shape = shape[::-1]
        return cls(np.array(mods), shape)

    @classmethod
    def jungfrau_4m(cls) -> "ModuleLayout":
        """8 modules, 2 x 4, gaps 8 and 36 pixels, transposed: 2068 x 2164 (JUNGFRAU_4M_SHAPE)."""
        return cls.grid(8, 2, 8, 36, transpose=True)

    @property
    def n_modules(self) -> int:
        return len(self.modules)

    @property
    def raw_shape(self) -> tuple:
        return (self.n_modules * MODULE_SHAPE[0], MODULE_SHAPE[1])

    def _outputs(self) -> np.ndarray:
        """(n, 514, 1030) flat output index of every assembled module pixel (bounds checked)."""
        r = np.arange(ASSEMBLED_MODULE_SHAPE[0])[:, None]
        c = np.arange(ASSEMBLED_MODULE_SHAPE[1])[None, :]
        out = []
        for k, (oy, ox, fy, fx, sy, sx) in enumerate(self.modules):
            y, x = oy + r * sy + c * fy, ox + r * sx + c * fx
            if y.min() < 0 or x.min() < 0 or y.max() >= self.shape[0] or x.max() >= self.shape[1]:
                raise ValueError(f"module {k} lies outside the {self.shape} image")
            out.append(y * self.shape[1] + x)
        return np.stack(out)

    @cached_property
    def gap_index(self) -> np.ndarray:
        """Flat indices (uint32) of the output pixels no module covers."""
        covered = np.zeros(self.shape[0] * self.shape[1], bool)
        covered[self._outputs().ravel()] = True
        return np.flatnonzero(~covered).astype(np.uint32)

    @cached_property
    def source_index(self) -> np.ndarray:
        """For each output pixel, the flat index of the raw pixel it shows (-1 in gaps)."""
        rows, row_extra = _expand(MODULE_SHAPE[0], 2)
        cols, col_extra = _expand(MODULE_SHAPE[1], 4)
        asm_row = np.empty(ASSEMBLED_MODULE_SHAPE[0], np.int64)
        asm_col = np.empty(ASSEMBLED_MODULE_SHAPE[1], np.int64)
        for raw_pos, first, extra, dest in ((np.arange(512), rows, row_extra, asm_row),
                                            (np.arange(1024), cols, col_extra, asm_col)):
            dest[first] = raw_pos
            dest[(first + extra)[extra != 0]] = raw_pos[extra != 0]
        src = np.full(self.shape[0] * self.shape[1], -1, np.int64)
        local = asm_row[:, None] * MODULE_SHAPE[1] + asm_col[None, :]
        for k, outputs in enumerate(self._outputs()):
            src[outputs.ravel()] = (k * MODULE_SHAPE[0] * MODULE_SHAPE[1] + local).ravel()
        return src.reshape(self.shape)

    def disassemble(self, image: np.ndarray) -> np.ndarray:
        """Raw-layout frame (n*512, 1024) from an assembled image of counts: each raw pixel gets
        the sum of the output pixels it covers (the inverse of the split); gaps are dropped."""
        image = np.asarray(image)
        if image.shape != self.shape:
            raise ValueError(f"image has shape {image.shape}, the geometry {self.shape}")
        src = self.source_index.ravel()
        inside = src >= 0
        acc = np.bincount(src[inside], weights=image.ravel()[inside].astype(np.float64),
                          minlength=self.raw_shape[0] * self.raw_shape[1])  # exact for counts below 2^53
        return acc.reshape(self.raw_shape).astype(image.dtype)

    def assemble(self, values: np.ndarray, fill) -> np.ndarray:
        """An assembled image of a per-pixel map of the raw layout (a pixel mask, say): each
        output pixel shows the value of the raw pixel it belongs to; gaps hold `fill`."""
        values = np.asarray(values)
        if values.shape != self.raw_shape:
            raise ValueError(f"map has shape {values.shape}, the raw frames {self.raw_shape}")
        src = self.source_index
        return np.where(src >= 0, values.ravel()[np.maximum(src, 0)], np.asarray(fill, values.dtype))

    def to_dict(self) -> dict:
        return {"modules": self.modules.tolist(), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d, n_modules: Optional[int] = None) -> "ModuleLayout":
        """The inverse of to_dict, for input from outside (a stream's start message): anything
        malformed raises ValueError. n_modules: the modules the raw frames hold, checked before
        the image (whose size the geometry sets) is allocated."""
        try:
            modules = np.asarray(d["modules"])
            shape = tuple(d["shape"])
            ok = modules.dtype.kind in "iu" and modules.ndim == 2 and modules.shape[1:] == (6,) and len(shape) == 2
            ok = ok and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shape)
        except (KeyError, TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ValueError("a geometry is {'modules': (n, 6) integer table, 'shape': [height, width]}")
        if n_modules is not None and len(modules) != n_modules:
            raise ValueError(f"the geometry places {len(modules)} modules, the raw frames hold {n_modules}")
        area = ASSEMBLED_MODULE_SHAPE[0] * ASSEMBLED_MODULE_SHAPE[1] * len(modules)
        if not (0 < shape[0] and 0 < shape[1] and shape[0] * shape[1] <= 4 * area) or np.abs(modules).max() > 2**20:
            raise ValueError(f"a geometry image of {shape} for {len(modules)} modules is out of bounds")
        return cls(modules, shape)


