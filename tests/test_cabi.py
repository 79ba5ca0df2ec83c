"""The C ABI of csrc/: one public header per job (redml.h the codec, redml_spots.h the spot
finder, redml_jungfrau.h the JUNGFRAU conversion), plain C; the HDF5 plugin exports only what
HDF5 needs; one list of sources (csrc/sources.mk) for setup.py and the Makefile."""
import ast
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import redml_reduce as rr
from redml_reduce import _core
from redml_reduce.formats.h5filter import _PLUGIN_FILE

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
PUBLIC_HEADERS = ["redml.h", "redml_spots.h", "redml_jungfrau.h"]


def _tool(*names):
    for name in names:
        if path := shutil.which(name):
            return path
    pytest.fail(f"none of {names} found (make deps installs them)")


def test_plugin_exports_only_what_hdf5_needs():
    out = subprocess.run([_tool("nm"), "-D", "--defined-only", _PLUGIN_FILE], capture_output=True, text=True,
                         check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    # HDF5 looks up the first two; redml_reduce/h5filter.py calls the third through ctypes.
    assert exported == {"H5PLget_plugin_type", "H5PLget_plugin_info", "redml_h5_check"}


@pytest.mark.parametrize("header", PUBLIC_HEADERS)
def test_public_header_is_self_contained_c(header, tmp_path):
    src = tmp_path / "use.c"
    src.write_text(f'#include "{header}"\nint main(void) {{ return 0; }}\n')
    cc = _tool("cc", "gcc", "clang")
    subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-fsyntax-only", f"-I{CSRC}",
                    str(src)], check=True)


def test_version_number_is_the_package_version():
    major, minor, patch = (int(v) for v in rr.__version__.split("."))
    assert _core.VERSION_NUMBER == major * 10000 + minor * 100 + patch
    # the chunk format has its own version
    assert _core.FORMAT_VERSION == 1


def test_binding_uses_the_public_headers_and_one_internal_header():
    includes = re.findall(r'^#include "([^"]+)"', (CSRC / "pybind.cpp").read_text(), flags=re.M)
    assert sorted(includes) == sorted(PUBLIC_HEADERS + ["internal.h"])


def _setup_py_lists():
    """csrc/sources.mk as setup.py reads it (its reader, without running setup())."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    reader = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "read_source_lists")
    ns = {"re": re}
    exec(compile(ast.Module(body=[reader], type_ignores=[]), "setup.py", "exec"), ns)
    return ns["read_source_lists"](CSRC / "sources.mk")


def _make_value(name):
    out = subprocess.run([_tool("make"), "-s", "--no-print-directory", "-f", str(CSRC / "sources.mk"),
                          "--eval", f"print: ; @echo $({name})", "print"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    return out.split()


def test_one_source_list_for_setup_py_and_make():
    lists = _setup_py_lists()
    assert set(lists) >= {"REDML_PLUGIN_SRC", "REDML_PYTHON_SRC", "REDML_LIBS"}
    for name, words in lists.items():
        assert _make_value(name) == words, name
    # Every core source is in exactly one job's list; the plugin is built from the codec only.
    jobs = ["REDML_CODEC_SRC", "REDML_SPOTS_SRC", "REDML_JUNGFRAU_SRC", "REDML_ML_SRC", "REDML_INDEX_SRC",
            "REDML_LEVELS_SRC"]
    in_jobs = [f for job in jobs for f in lists[job]]
    entries = {"csrc/pybind.cpp", "csrc/h5filter.cpp"}
    on_disk = {f"csrc/{p.name}" for p in CSRC.glob("*.cpp")}
    assert sorted(in_jobs) == sorted(on_disk - entries)
    assert lists["REDML_PLUGIN_SRC"] == ["csrc/h5filter.cpp"] + lists["REDML_CODEC_SRC"]
    assert sorted(lists["REDML_PYTHON_SRC"]) == sorted(["csrc/pybind.cpp"] + in_jobs)


def _dilate_reference(mask, margin):
    h, w = mask.shape
    padded = np.pad(mask, margin)
    out = np.zeros_like(mask)
    for dy in range(2 * margin + 1):
        for dx in range(2 * margin + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


@pytest.mark.parametrize("margin", [0, 1, 3])
def test_dilate_through_the_c_api(margin):
    rng = np.random.default_rng(margin)
    mask = rng.random((37, 53)) < 0.02
    out = _core.dilate(mask.astype(np.uint8), margin, 2)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, _dilate_reference(mask, margin))
    assert _core.dilate(np.zeros((0, 5), np.uint8), 2).shape == (0, 5)


def test_radial_profile_through_the_c_api():
    rng = np.random.default_rng(1)
    frame = rng.poisson(20.0, (64, 64)).astype(np.int32)
    frame[5, 5] = 10_000  # a spot, clipped away
    frame[6, 6] = -1  # special value: ignored
    bins = (np.arange(frame.size, dtype=np.int32) % 4).reshape(frame.shape)
    bins[0, :3] = -1
    mean, sigma, count = _core.radial_profile(frame, bins, 4, 3.0, 3, 2)
    assert mean.shape == sigma.shape == count.shape == (4,)
    usable = (bins >= 0) & (frame >= 0) & (frame < 10_000)
    for b in range(4):
        kept = frame[usable & (bins == b)]
        assert count[b] == kept.size
        assert mean[b] == pytest.approx(kept.mean(), rel=1e-12)
        assert sigma[b] == pytest.approx(kept.std(ddof=1), rel=1e-12)
