"""A detector's side of the stream (tests, the simulator, benchmarks): a ZeroMQ PUSH socket
sending Stream V2 messages (StreamSender), and one whole series sent through it (publish_series)."""
from __future__ import annotations

import math
import time
import uuid
from typing import Optional, Sequence

import numpy as np

from .compression import compress
from .protocol import DEFAULT_PORT, encode_end, encode_image, encode_start

__all__ = ["StreamSender", "publish_series"]


class StreamSender:
    """A detector's side of the stream: a ZeroMQ PUSH socket that binds (like a DCU) or
    connects. send_hwm bounds the messages queued for a slow receiver (send then blocks).
    close() waits up to linger_ms for the receiver to take what is still queued (the last
    images and the end message), then gives up on them."""

    def __init__(self, endpoint: str = f"tcp://*:{DEFAULT_PORT}", *, bind: bool = True, send_hwm: int = 4,
                 linger_ms: int = 120000):
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, int(send_hwm))
        self.sock.setsockopt(zmq.LINGER, int(linger_ms))
        (self.sock.bind if bind else self.sock.connect)(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT) if bind else endpoint
        self.series_id = 0
        self.series_unique_id = ""
        self.sent = 0

    def send(self, message: bytes, timeout_s: Optional[float] = None) -> None:
        """Sends one message; blocks while the receiver's queue is full (TimeoutError after timeout_s)."""
        import zmq

        if timeout_s is not None and not self.sock.poll(int(timeout_s * 1000), zmq.POLLOUT):
            raise TimeoutError(f"no receiver took a message for {timeout_s} s")
        self.sock.send(message, copy=True)
        self.sent += 1

    def start(self, shape, dtype, geometry=None, **kw) -> None:
        self.series_id = kw.pop("series_id", self.series_id + 1)
        self.series_unique_id = kw.pop("series_unique_id", None) or f"redml-{uuid.uuid4().hex[:12]}"
        self.send(encode_start(shape, dtype, geometry, series_id=self.series_id,
                               series_unique_id=self.series_unique_id, **kw))

    def image(self, frame, image_id: int, **kw) -> None:
        self.send(encode_image(frame, image_id, series_id=self.series_id, series_unique_id=self.series_unique_id, **kw))

    def end(self) -> None:
        self.send(encode_end(self.series_id, self.series_unique_id))

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()  # returns once the queued messages are delivered, or after linger_ms

    def __enter__(self) -> "StreamSender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def publish_series(sender: StreamSender, frames: Sequence[np.ndarray], n_images: int, *, rate_hz: float = 0.0,
                   compression: Optional[str] = None, geometry=None, pixel_mask=None, start_kw: Optional[dict] = None,
                   progress=None) -> dict:
    """Sends one series: start, n_images image messages cycling through `frames` (each
    compressed once), end. rate_hz > 0 paces the images (0 = as fast as the receiver
    takes them). Returns {"images", "seconds", "rate_hz", "wire_bytes"}."""
    if not frames:
        raise ValueError("no frames to send")
    shape, dtype = frames[0].shape, frames[0].dtype
    sat = np.iinfo(dtype).max - 1 if dtype.kind in "ui" else None  # the maximum means 'no data'
    payloads = [compress(f, compression) if compression else None for f in frames]  # once, before the series
    sender.start(shape, dtype, geometry, number_of_images=n_images, pixel_mask=pixel_mask,
                 compression=compression, saturation_value=sat,
                 frame_time_s=1.0 / rate_hz if rate_hz > 0 else 0.001, **(start_kw or {}))
    wire = 0
    t0 = time.perf_counter()
    for i in range(n_images):
        if rate_hz > 0:
            delay = t0 + i / rate_hz - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        k = i % len(frames)
        msg = encode_image(frames[k], i, series_id=sender.series_id, series_unique_id=sender.series_unique_id,
                           compression=compression, payload=payloads[k])
        sender.send(msg)
        wire += len(msg)
        if progress is not None:
            progress(i + 1)
    sender.end()
    dt = time.perf_counter() - t0
    return {"images": n_images, "seconds": dt, "rate_hz": n_images / dt if dt > 0 else math.inf, "wire_bytes": wire}
