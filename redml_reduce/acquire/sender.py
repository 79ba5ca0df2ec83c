"""A detector's side of the stream (tests, the simulator, benchmarks): a ZeroMQ PUSH socket
sending Stream V2 messages (StreamSender), and one whole series sent through it (publish_series).

Several receivers (peers=N): as Jungfraujoch does for its writers, one PUSH socket per
receiver (consecutive ports); the start and end messages go to every receiver, the images
round-robin to the next receiver that can take one (a slow or dead receiver is skipped). A
receiver that was not connected when a series started gets nothing of it and joins the
next series."""
from __future__ import annotations

import math
import time
import uuid
from typing import Optional, Sequence

import numpy as np

from .compression import compress
from .protocol import DEFAULT_PORT, encode_end, encode_image, encode_start

__all__ = ["StreamSender", "publish_series", "free_consecutive_ports"]


class StreamSender:
    """A detector's side of the stream: a ZeroMQ PUSH socket that binds (like a DCU) or
    connects. send_hwm bounds the messages queued for a slow receiver (send then blocks).
    close() waits up to linger_ms for the receiver to take what is still queued (the last
    images and the end message), then gives up on them. peers > 1 (bind only): one socket
    per receiver on consecutive ports (`endpoints`); a series' start waits up to peer_wait_s
    for every receiver to be connected (at least one, however long), its end up to
    end_timeout_s for each receiver that took the start (a dead one never takes it)."""

    def __init__(self, endpoint: str = f"tcp://*:{DEFAULT_PORT}", *, bind: bool = True, send_hwm: int = 4,
                 linger_ms: int = 120000, peers: int = 1, peer_wait_s: float = 0.0, end_timeout_s: float = 30.0):
        import zmq

        if peers < 1 or (peers > 1 and not bind):
            raise ValueError("peers must be >= 1, and several peers need bind=True (one socket each)")
        self.ctx = zmq.Context()
        self.socks = []
        for k in range(peers):
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, int(send_hwm))
            sock.setsockopt(zmq.LINGER, int(linger_ms))
            (sock.bind if bind else sock.connect)(_nth_endpoint(endpoint, k))
            self.socks.append(sock)
        self.sock = self.socks[0]
        self.endpoints = [s.getsockopt_string(zmq.LAST_ENDPOINT) for s in self.socks] if bind else [endpoint]
        self.endpoint = self.endpoints[0]
        self.peer_wait_s = float(peer_wait_s)
        self.end_timeout_s = float(end_timeout_s)
        self.active = list(self.socks)  # the sockets that took this series' start message
        self._next = 0
        self.series_id = 0
        self.series_unique_id = ""
        self.sent = 0

    def send(self, message: bytes, timeout_s: Optional[float] = None) -> None:
        """Sends one message (to the next receiver that can take it, when there are several);
        blocks while every receiver's queue is full (TimeoutError after timeout_s)."""
        sock = self._writable(timeout_s)
        if sock is None:
            raise TimeoutError(f"no receiver took a message for {timeout_s} s")
        sock.send(message, copy=True)
        self.sent += 1

    def _writable(self, timeout_s: Optional[float]):
        """The next active socket, in turn, that can take a message now; else the first that
        can within timeout_s (None: wait as long as it takes)."""
        import zmq

        if len(self.active) == 1:
            s = self.active[0]
            return s if timeout_s is None or s.poll(int(timeout_s * 1000), zmq.POLLOUT) else None
        poller = zmq.Poller()
        for s in self.active:
            poller.register(s, zmq.POLLOUT)
        t_end = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            ready = dict(poller.poll(0))
            n = len(self.active)
            for k in range(n):
                s = self.active[(self._next + k) % n]
                if s in ready:
                    self._next = (self._next + k + 1) % n
                    return s
            left = None if t_end is None else t_end - time.monotonic()
            if left is not None and left <= 0:
                return None
            poller.poll(100 if left is None else max(1, min(100, int(left * 1000))))

    def broadcast(self, message: bytes, sockets, timeout_s: float) -> list:
        """Sends `message` to every socket of `sockets` that can take it within timeout_s
        (a socket without a receiver never can); returns those that took it."""
        import zmq

        took, left = [], list(sockets)
        t_end = time.monotonic() + timeout_s
        while left:
            poller = zmq.Poller()
            for s in left:
                poller.register(s, zmq.POLLOUT)
            ready = dict(poller.poll(max(0, int((t_end - time.monotonic()) * 1000))))
            if not ready:
                break
            for s in [s for s in left if s in ready]:
                s.send(message, copy=True)
                self.sent += 1
                took.append(s)
                left.remove(s)
        return took

    def start(self, shape, dtype, geometry=None, **kw) -> None:
        self.series_id = kw.pop("series_id", self.series_id + 1)
        self.series_unique_id = kw.pop("series_unique_id", None) or f"redml-{uuid.uuid4().hex[:12]}"
        msg = encode_start(shape, dtype, geometry, series_id=self.series_id, series_unique_id=self.series_unique_id,
                           **kw)
        if len(self.socks) == 1:
            self.send(msg)
            return
        # every receiver connected by now takes the series; the others join the next one
        self.active = self.broadcast(msg, self.socks, self.peer_wait_s)
        while not self.active:  # nobody yet: the first receivers to connect take the series
            time.sleep(0.02)
            self.active = self.broadcast(msg, self.socks, 0)
        self._next = 0

    def image(self, frame, image_id: int, **kw) -> None:
        self.send(encode_image(frame, image_id, series_id=self.series_id, series_unique_id=self.series_unique_id, **kw))

    def end(self) -> None:
        msg = encode_end(self.series_id, self.series_unique_id)
        if len(self.socks) == 1:
            self.send(msg)
            return
        # a receiver gone since the start (its socket never takes a message) is given up after end_timeout_s
        self.broadcast(msg, self.active, self.end_timeout_s)

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.ctx.term()  # returns once the queued messages are delivered, or after linger_ms

    def __enter__(self) -> "StreamSender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _nth_endpoint(endpoint: str, k: int) -> str:
    """The k-th of consecutive ports from `endpoint` (tcp://HOST:PORT; a port of * stays *)."""
    if k == 0:
        return endpoint
    head, _, port = endpoint.rpartition(":")
    if port == "*":
        return endpoint
    if not port.isdigit() or not head.startswith("tcp://"):
        raise ValueError(f"several peers need a tcp://HOST:PORT endpoint, not {endpoint!r}")
    return f"{head}:{int(port) + k}"


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


def free_consecutive_ports(n: int, host: str = "127.0.0.1", tries: int = 100) -> int:
    """A base TCP port whose next n-1 ports are free too, for a sender with n peers (it binds
    base, base+1, ...). Free when checked: another process may still take one before the bind."""
    import socket

    for base in np.random.default_rng().integers(20000, 60000, tries):
        socks = []
        try:
            for k in range(n):
                socks.append(socket.socket())
                socks[-1].bind((host, int(base) + k))
            return int(base)
        except OSError:
            continue
        finally:
            for so in socks:
                so.close()
    raise RuntimeError(f"no {n} consecutive free ports found on {host}")
