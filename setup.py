"""Build of redml_reduce: one C++ core (csrc/) compiled into two artifacts.

- redml_reduce._core: the Python extension (pybind11).
- redml_reduce/plugins/libh5redml.so: the HDF5 filter plugin, loadable through
  HDF5_PLUGIN_PATH; it links zstd, lz4, xxhash and htscodecs (rANS) but not libhdf5.
"""
import os

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import Extension, setup

CORE = ["csrc/codec.cpp", "csrc/container.cpp", "csrc/entropy.cpp", "csrc/background.cpp", "csrc/spots.cpp", "csrc/spots_api.cpp", "csrc/radial.cpp", "csrc/jungfrau.cpp"]
LIBS = ["zstd", "lz4", "xxhash", "htscodecs"]
# Portable release flags: no -march=native, no fast-math (the quantizer relies on IEEE rounding).
CFLAGS = ["-O3", "-fvisibility=hidden", "-fno-fast-math", "-Wall"]
if os.environ.get("REDML_DEBUG"):
    CFLAGS = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-Wall"]


class BuildExt(build_ext):
    """Names the filter plugin libh5redml.so (HDF5 looks for lib*.so in its plugin path)."""

    def get_ext_filename(self, ext_name):
        if ext_name.endswith("libh5redml"):
            return os.path.join(*ext_name.split(".")) + ".so"
        return super().get_ext_filename(ext_name)


core = Pybind11Extension(
    "redml_reduce._core",
    ["csrc/pybind.cpp", "csrc/conv.cpp"] + CORE,  # conv.cpp: the learned spot finder's layers (not the plugin's)
    include_dirs=["csrc"],
    libraries=LIBS,
    extra_compile_args=CFLAGS,
    cxx_std=17,
)
plugin = Extension(
    "redml_reduce.plugins.libh5redml",
    ["csrc/h5filter.cpp"] + CORE,
    include_dirs=["csrc"],
    libraries=LIBS + ["dl"],
    extra_compile_args=CFLAGS + ["-std=c++17"],
    language="c++",
)

setup(ext_modules=[core, plugin], cmdclass={"build_ext": BuildExt})
