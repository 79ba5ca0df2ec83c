"""Live acquisition (redml acquire): the detector stream protocol (protocol), the
receiving service (server) and its frame workers (worker), the file of a series (series),
live indicators (indicators), the dashboard (dashboard) and the command (cli).

    from redml_reduce.acquire import AcquireSettings, Acquisition
    with Acquisition("run_{series}.nxs", AcquireSettings(q=1)) as acq:
        acq.serve("tcp://dcu:31001")
"""
from .server import AcquireSettings, Acquisition

__all__ = ["AcquireSettings", "Acquisition"]
