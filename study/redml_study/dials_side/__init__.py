"""Scripts that run under DIALS's own interpreter (Debian's /usr/bin/python3 with cctbx,
dxtbx and dials), called as subprocesses by redml_study.sim and redml_study.yardstick.

They are files, not imports: the project's virtualenv never imports cctbx or dials.
shim/ holds the one workaround Debian's packaging needs (see shim/xfel_mono_sim_ext.py).
"""
import os
from pathlib import Path

# the interpreter with cctbx, dxtbx and dials that runs these scripts
DIALS_PYTHON = os.environ.get("REDML_DIALS_PYTHON", "/usr/bin/python3")

HERE = Path(__file__).resolve().parent
SHIM_DIR = HERE / "shim"


def script(name: str) -> str:
    """Path of one of the scripts here, e.g. script("lattice.py")."""
    path = HERE / name
    if not path.is_file():
        raise FileNotFoundError(path)
    return str(path)
