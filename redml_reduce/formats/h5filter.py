"""The redml HDF5 filter: registration with h5py and dataset-creation helper.

Usage::

    import h5py, redml_reduce
    with h5py.File("data.h5", "w") as f:
        f.create_dataset("data", data=frames, chunks=(1, *frames.shape[1:]),
                         **redml_reduce.Redml(q=1.0))
    # any HDF5 program reads it with HDF5_PLUGIN_PATH=redml_reduce.PLUGIN_PATH
"""
from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Mapping

import h5py

from ..codec import CodecSettings

__all__ = ["FILTER_ID", "PLUGIN_PATH", "Redml", "register", "is_registered"]

FILTER_ID = 310
"""Filter id, from the range HDF5 reserves for unregistered filters (256-511)."""

PLUGIN_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugins")
"""Directory to put in HDF5_PLUGIN_PATH for h5dump, h5repack, DIALS and other C tools."""

_PLUGIN_FILE = os.path.join(PLUGIN_PATH, "libh5redml.so")
_lib = None
_hdf5plugin_set_up = False
_hdf5plugin_lock = threading.Lock()


def register(force: bool = False) -> None:
    """Registers this package's filter with h5py's HDF5 library (done on `import redml_reduce`).

    Always this package's plugin, even when HDF5_PLUGIN_PATH already offers filter 310 (this
    one or another install's): registering replaces it. The plugin resolves the HDF5
    functions it calls from whichever libhdf5 calls it, so the same file also serves the
    C tools through HDF5_PLUGIN_PATH. force=True registers again.
    """
    global _lib
    if _lib is not None and not force:
        return
    if not os.path.exists(_PLUGIN_FILE):
        raise ImportError(f"redml filter plugin not found at {_PLUGIN_FILE}; reinstall redml_reduce")
    lib = ctypes.CDLL(_PLUGIN_FILE)
    lib.redml_h5_check.argtypes = [ctypes.c_char_p]
    lib.redml_h5_check.restype = ctypes.c_int
    # h5py.h5z links h5py's own libhdf5, the library that will call the filter.
    if lib.redml_h5_check(h5py.h5z.__file__.encode()) != 0:
        raise ImportError("redml filter: h5py's HDF5 library lacks functions the filter calls")
    lib.H5PLget_plugin_info.restype = ctypes.c_void_p
    h5py.h5z.register_filter(lib.H5PLget_plugin_info())
    _lib = lib


def load_hdf5plugin():
    """hdf5plugin (an optional dependency), its filters ready to write from h5py.

    Its import skips setting up a filter that HDF5_PLUGIN_PATH already offers (hdf5plugin's
    own folder on the path), and such a filter then fails every write; registering them
    again sets them up. That is done once, under a lock: it unregisters the filters first,
    which HDF5 refuses while an open dataset uses one, so it must not run again once another
    thread writes with them (call this before starting such threads).
    """
    global _hdf5plugin_set_up
    import hdf5plugin

    with _hdf5plugin_lock:
        if not _hdf5plugin_set_up and os.environ.get("HDF5_PLUGIN_PATH"):
            hdf5plugin.register(force=True)
        _hdf5plugin_set_up = True
    return hdf5plugin


def is_registered() -> bool:
    return bool(h5py.h5z.filter_avail(FILTER_ID))


class Redml(Mapping):
    """create_dataset keyword arguments for the redml filter (hdf5plugin style).

    Chunks must hold one frame: chunks=(1, height, width). The filter is marked
    mandatory, so a frame the encoder refuses fails the write instead of being stored
    uncompressed behind your back.

    >>> f.create_dataset("data", data=frames, chunks=(1, h, w), **Redml(q=1))
    """

    filter_id = FILTER_ID

    def __init__(self, q=0.0, **settings):
        self.settings = CodecSettings(q=q, **settings)
        self._kwargs = {"compression": FILTER_ID, "compression_opts": self.settings.cd_values()}

    @property
    def filter_options(self) -> tuple:
        return self._kwargs["compression_opts"]

    def dcpl(self, shape, dtype, chunks):
        """A dataset creation property list with the filter set mandatory."""
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_chunk(tuple(chunks))
        plist.set_filter(FILTER_ID, 0, self.filter_options)  # flags 0 = mandatory
        return plist

    def h5repack_arg(self, dataset: str = "") -> str:
        """The -f argument of h5repack that applies this filter."""
        opts = self.filter_options
        return f"{dataset + ':' if dataset else ''}UD={FILTER_ID},0,{len(opts)},{','.join(map(str, opts))}"

    def __getitem__(self, key):
        return self._kwargs[key]

    def __iter__(self):
        return iter(self._kwargs)

    def __len__(self):
        return len(self._kwargs)

    def __repr__(self):
        return f"Redml({self.settings})"
