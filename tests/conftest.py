import os
import random
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

# Three real Pilatus 6M stills (from the DIALS regression data, thaumatin_grid) ship with the
# tests, so a fresh clone needs nothing beside it; benchmarks read all 19 from ../shared/data.
THAUMATIN = Path(__file__).resolve().parent / "data" / "thaumatin"
THAUMATIN_FRAMES = (1, 10, 17)

# Fresh random data each run; REDML_TEST_SEED=<n> reproduces a run (printed in the header).
BASE_SEED = int(os.environ.get("REDML_TEST_SEED", random.randrange(2**31)))


def pytest_report_header(config):
    return f"redml test seed: REDML_TEST_SEED={BASE_SEED}"


@pytest.fixture
def rng(request):
    return np.random.default_rng([BASE_SEED, zlib.crc32(request.node.nodeid.encode())])


@pytest.fixture(scope="session")
def thaumatin():
    """Real Pilatus 6M stills (int32, gaps negative): a strong hit, a weak one, a blank."""
    import fabio

    return {n: fabio.open(str(THAUMATIN / f"thau_3_2_{n:04d}.cbf.bz2")).data for n in THAUMATIN_FRAMES}
