import os
import random
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
THAUMATIN = SHARED / "data" / "thaumatin_grid"

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

    assert THAUMATIN.is_dir(), f"real frames missing: {THAUMATIN}"
    return {n: fabio.open(str(THAUMATIN / f"thau_3_2_{n:04d}.cbf.bz2")).data for n in (1, 10, 17)}


@pytest.fixture(scope="session")
def thaumatin_all():
    """All 19 real stills by number (loaded lazily)."""
    import fabio

    class Frames(dict):
        def __missing__(self, n):
            self[n] = fabio.open(str(THAUMATIN / f"thau_3_2_{n:04d}.cbf.bz2")).data
            return self[n]

    return Frames()
