"""Live acquisition (redml acquire): the detector stream protocol (protocol: messages and
parsing; compression: compressed frames; sender: a detector's side), the receiving service
(server: settings and the serve loop; receiver: messages in; pool and worker: the frame
workers; filewriter: the writer thread; state: a series' record), the file of a series
(series), live indicators (indicators), the dashboard (dashboard) and the command (cli).

    from redml_reduce.acquire import AcquireSettings, Acquisition
    with Acquisition("run_{series}.nxs", AcquireSettings(q=1)) as acq:
        acq.serve("tcp://dcu:31001")
"""
from .server import AcquireSettings, Acquisition

__all__ = ["AcquireSettings", "Acquisition"]
