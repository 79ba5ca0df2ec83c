"""Recompression of existing data (redml recompress): the run over a Dask cluster (run),
one input's tasks (tasks), the files written (outputs) and the report (report).

    from redml_reduce.recompress import recompress
    report = recompress(["run_0001_master.h5"], "out/", q=1, workers=4)
"""
from .run import MANIFEST_NAME, TMP_NAME, Interrupted, recompress
from .tasks import VerificationError, verify_chunk

__all__ = ["recompress", "Interrupted", "MANIFEST_NAME", "TMP_NAME", "VerificationError", "verify_chunk"]
