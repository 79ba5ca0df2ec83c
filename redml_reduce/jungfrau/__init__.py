"""JUNGFRAU raw frames: the module layout (layout), calibrations and their files
(calibration), pedestals from dark runs (dark) and the conversion to photons (conversion).

    calib = jungfrau.load_calibration("calib_dir")          # or Calibration(pedestal, gain, energy_keV, ...)
    photons, info = jungfrau.convert(raw, calib)             # int32 photons (assembled if calib.geometry)
    chunk = redml_reduce.encode(raw, calibration=calib, q=1)  # convert, then encode
"""
from .calibration import *  # noqa: F401,F403
from .calibration import __all__ as _calibration
from .conversion import *  # noqa: F401,F403
from .conversion import __all__ as _conversion
from .dark import *  # noqa: F401,F403
from .dark import __all__ as _dark
from .layout import *  # noqa: F401,F403
from .layout import __all__ as _layout

__all__ = [*_layout, *_calibration, *_dark, *_conversion]
