"""The conditional reconstructions (mean, draw) decode to the same bytes as the decoder that
wrote tests/golden/recon_v1 (tests/golden/make_recon_digests.py): photon counts and integrating
data (ADU of several gains, float photons), several steps and background levels, each chunk
decoded with both reconstructions on one thread and on several. The decoder's faster forms
(tables, lanes) must reproduce the normative definition (docs/format.md) bit for bit."""
import hashlib
import json
from pathlib import Path

import pytest

import redml_reduce as rr

GOLDEN = Path(__file__).parent / "golden" / "recon_v1"
DIGESTS = json.loads((GOLDEN / "digests.json").read_text())


def test_every_case_has_its_chunk():
    assert len(DIGESTS) >= 10
    assert sorted(p.stem for p in GOLDEN.glob("*.rdml")) == sorted(DIGESTS)


@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_decodes_to_the_stored_bytes(name):
    chunk = (GOLDEN / f"{name}.rdml").read_bytes()
    for key, digest in DIGESTS[name].items():
        recon, nt = key.split("_nt")
        out = rr.decode(chunk, recon=recon, nthreads=int(nt))
        assert hashlib.sha256(out.tobytes()).hexdigest() == digest, key


def test_tables_kept_across_chunks_do_not_change_the_pixels():
    """The decoder keeps per-bin tables of integrating data across frames of one gain and read
    noise (and empties them for another): a chunk decodes to the same bytes cold, after chunks
    of other gains, and after itself."""
    names = [n for n in sorted(DIGESTS) if n.startswith("adu_")]
    chunks = {n: (GOLDEN / f"{n}.rdml").read_bytes() for n in names}
    first = {n: rr.decode(chunks[n], recon="draw", nthreads=1).tobytes() for n in names}
    for n in reversed(names):
        assert rr.decode(chunks[n], recon="draw", nthreads=1).tobytes() == first[n], n
        assert hashlib.sha256(first[n]).hexdigest() == DIGESTS[n]["draw_nt1"], n
