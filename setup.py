"""Build of redml_reduce: one C++ core (csrc/) compiled into two artifacts.

- redml_reduce._core: the Python extension (pybind11).
- redml_reduce/plugins/libh5redml.so: the HDF5 filter plugin, loadable through
  HDF5_PLUGIN_PATH; it links zstd, lz4, xxhash and htscodecs (rANS) but not libhdf5.

Their sources are listed in csrc/sources.mk, which the Makefile's fuzz build reads too.
"""
import glob
import os
import re
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_source_lists(path):
    """The `NAME := words` lines of a make file, $(NAME) references expanded: {NAME: [words]}."""
    lists = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            m = re.fullmatch(r"(\w+)\s*:=\s*(.*)", line)
            if not m:
                raise ValueError(f"{path}: not a `NAME := words` line: {line!r}")
            value = re.sub(r"\$\((\w+)\)", lambda r: " ".join(lists[r.group(1)]), m.group(2))
            lists[m.group(1)] = value.split()
    return lists


SOURCES = read_source_lists(os.path.join(HERE, "csrc", "sources.mk"))
LIBS = SOURCES["REDML_LIBS"]
# Portable release flags: no -march=native, no fast-math (the quantizer relies on IEEE rounding),
# no FMA contraction (a packager's -march=x86-64-v3 must not change the chunks).
CFLAGS = ["-O3", "-fvisibility=hidden", "-fno-fast-math", "-ffp-contract=off", "-Wall"]
# The lattice prediction (csrc/lattice.cpp) must give the same bits in the encoder and in every
# decoder (plugin, extension, debug build): the debug flags keep the same floating-point rules.
if os.environ.get("REDML_DEBUG"):
    CFLAGS = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-ffp-contract=off", "-Wall"]
# Both artifacts embed the core and export none of its C API (REDML_API in csrc/redml.h).
EMBEDDED = [("REDML_API", "")]
# The plugin exports only what HDF5 and redml_reduce/h5filter.py look up (a GNU ld version script).
PLUGIN_MAP = "csrc/h5filter.map"
# Every header: an edited header rebuilds the extension (setuptools does not scan #includes).
HEADERS = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc", "*.h")))
PLUGIN_LDFLAGS = ["-Wl,--version-script=" + os.path.join(HERE, PLUGIN_MAP)] if sys.platform.startswith("linux") else []


class BuildExt(build_ext):
    """Names the filter plugin libh5redml.so (HDF5 looks for lib*.so in its plugin path)."""

    def get_ext_filename(self, ext_name):
        if ext_name.endswith("libh5redml"):
            return os.path.join(*ext_name.split(".")) + ".so"
        return super().get_ext_filename(ext_name)


core = Pybind11Extension(
    "redml_reduce._core",
    SOURCES["REDML_PYTHON_SRC"],
    include_dirs=["csrc"],
    define_macros=EMBEDDED,
    libraries=LIBS,
    extra_compile_args=CFLAGS,
    depends=HEADERS,
    cxx_std=17,
)
plugin = Extension(
    "redml_reduce.plugins.libh5redml",
    SOURCES["REDML_PLUGIN_SRC"],
    include_dirs=["csrc"],
    define_macros=EMBEDDED,
    libraries=LIBS + ["dl"],
    extra_compile_args=CFLAGS + ["-std=c++17"],
    extra_link_args=PLUGIN_LDFLAGS,
    depends=[PLUGIN_MAP] + HEADERS,
    language="c++",
)

setup(ext_modules=[core, plugin], cmdclass={"build_ext": BuildExt})
