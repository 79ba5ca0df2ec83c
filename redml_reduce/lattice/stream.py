"""Crystals from a CrystFEL stream (indexamajig's .stream): astar/bstar/cstar per crystal of
each chunk, in redml's laboratory frame, keyed by image file and event.

    table = read_stream("run.stream")           # a CrystalTable (redml_reduce.lattice.expt)
    table.for_frame("/data/run_master.h5", 12)  # the crystals of "Event: //12"

CrystFEL's laboratory frame has z along the beam, like redml's; x and y are those of the
geometry file, in which the panel's fs and ss vectors are given ("p0/fs = +1.0x"). The
reciprocal vectors (nm^-1) are rotated so that x follows fs and y follows ss, and scaled to
1/Angstrom. The geometry comes from the stream's own geometry block (one panel normal to
the beam: corner_x/corner_y in pixels, res in pixels per metre, clen (+ coffset) in metres,
photon_energy or wavelength), with each chunk's photon_energy_eV and
average_camera_length when present; pixel (fs, ss) lies at corner + fs*fsvec + ss*ssvec with
pixel centres at +0.5 (CrystFEL 0.10 and later). Without a usable geometry block the crystals
carry no geometry and the frame's own is used (e.g. from the CBF headers).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..background import BeamGeometry
from .expt import CrystalTable
from .predict import CENTRINGS, Crystal

__all__ = ["read_stream", "parse_stream"]

HC_EV_A = 12398.419843  # h c in eV * Angstrom
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_VECTOR = re.compile(rf"^\s*([abc])star\s*=\s*({_NUM})\s+({_NUM})\s+({_NUM})\s*nm\^-1")
_AXIS_TERM = re.compile(rf"([-+]?\s*(?:{_NUM})?)\s*([xyz])")


def _axis(text: str) -> np.ndarray:
    """A geometry-file direction such as "+1.0x", "-y" or "0.0012x +0.9999y" -> 3-vector."""
    v = np.zeros(3)
    rest = text.strip()
    for coef, axis in _AXIS_TERM.findall(rest):
        coef = coef.replace(" ", "")
        v["xyz".index(axis)] += float(coef + "1") if coef in ("", "+", "-") else float(coef)
    if not v.any():
        raise ValueError(f"cannot read the direction {text!r}")
    return v


def _geometry_block(lines) -> dict:
    """key -> value of the geometry file between the stream's Begin/End geometry file lines
    (panel keys as 'p0/corner_x'; comments dropped)."""
    out = {}
    for line in lines:
        line = line.split(";", 1)[0].strip()
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _number(value):
    """The leading number of a geometry value ("0.1", "9000 eV"), or None (a header path)."""
    m = re.match(rf"^\s*({_NUM})", value or "")
    return float(m.group(1)) if m else None


class _Detector:
    """The single panel of a stream's geometry block: rotation into redml's frame, beam centre,
    pixel size, and the distance and wavelength defaults."""

    def __init__(self, geom: dict):
        panels = sorted({k.split("/", 1)[0] for k in geom if "/" in k})
        if len(panels) != 1:
            raise ValueError(f"the stream's geometry has {len(panels)} panels; one is supported")
        p = panels[0]
        get = lambda key: geom.get(f"{p}/{key}", geom.get(key))  # noqa: E731  (a panel's value or the global one)
        f, s = _axis(get("fs") or "+1.0x"), _axis(get("ss") or "+1.0y")
        if abs(f[2]) > 1e-6 or abs(s[2]) > 1e-6 or abs(f @ s) > 1e-6 or abs(np.linalg.norm(f) - 1) > 1e-3 \
                or abs(np.linalg.norm(s) - 1) > 1e-3:
            raise ValueError("the stream's panel is not flat, normal to the beam, with unit fs/ss vectors")
        f, s = f / np.linalg.norm(f), s / np.linalg.norm(s)
        # Rows fast, slow, beam: CrystFEL lab vectors -> redml's frame (an improper rotation when
        # fs x ss = -z, which keeps every prediction: z, the beam, is unchanged).
        self.R = np.stack([f, s, [0.0, 0.0, 1.0]])
        corner = np.array([_number(get("corner_x")) or 0.0, _number(get("corner_y")) or 0.0])
        # The lab origin (beam axis) at fs, ss with corner + fs*f + ss*s = 0.
        fs_ss = np.linalg.solve(np.array([f[:2], s[:2]]).T, -corner)
        self.beam_x, self.beam_y = float(fs_ss[0]), float(fs_ss[1])
        res = _number(get("res"))
        self.pixel_mm = 1000.0 / res if res else None
        clen = _number(get("clen"))
        self.distance_mm = None if clen is None else (clen + (_number(get("coffset")) or 0.0)) * 1000.0
        energy, wavelength = _number(geom.get("photon_energy")), _number(geom.get("wavelength"))
        self.wavelength_a = HC_EV_A / energy if energy else (wavelength * 1e10 if wavelength and
                                                             wavelength < 1e-6 else wavelength)

    def geometry(self, chunk: dict):
        energy = _number(chunk.get("photon_energy_eV"))
        wavelength = HC_EV_A / energy if energy else self.wavelength_a
        length = _number(chunk.get("average_camera_length"))
        distance = length * 1000.0 if length else self.distance_mm
        if not (self.pixel_mm and wavelength and distance):
            return None
        return BeamGeometry(self.beam_x, self.beam_y, distance, self.pixel_mm, wavelength)


def _event_index(event: str) -> int:
    """Frame index of an "Event:" value ("//12", "12"); 0 when there is none."""
    m = re.search(r"(\d+)\s*$", event or "")
    return int(m.group(1)) if m else 0


def parse_stream(text: str, source: str = "stream") -> list:
    """[(image path, frame index, Crystal)] of a stream's text."""
    lines = text.splitlines()
    detector, entries = None, []
    if "----- Begin geometry file -----" in lines and "----- End geometry file -----" in lines:
        a, b = lines.index("----- Begin geometry file -----"), lines.index("----- End geometry file -----")
        try:
            detector = _Detector(_geometry_block(lines[a + 1:b]))
        except ValueError:
            detector = None  # crystals without geometry: the frame's own is used
    chunk, crystal, in_chunk = {}, None, False
    for n, line in enumerate(lines, 1):
        if line.startswith("----- Begin chunk"):
            chunk, crystal, in_chunk = {}, None, True
        elif line.startswith("----- End chunk"):
            in_chunk = False
        elif not in_chunk:
            continue
        elif line.startswith("--- Begin crystal"):
            crystal = {"centering": "P"}
        elif line.startswith("--- End crystal"):
            if crystal is None or not all(k in crystal for k in "abc"):
                raise ValueError(f"{source}:{n}: a crystal without astar, bstar and cstar")
            if "Image filename" not in chunk:
                raise ValueError(f"{source}:{n}: a chunk without 'Image filename'")
            A = np.stack([crystal[k] for k in "abc"], axis=1) / 10.0  # nm^-1 -> 1/Angstrom, columns a* b* c*
            geometry = None
            if detector is not None:
                A = detector.R @ A
                geometry = detector.geometry(chunk)
            centring = crystal["centering"] if crystal["centering"] in CENTRINGS else "P"
            entries.append((chunk["Image filename"], _event_index(chunk.get("Event")),
                            Crystal(A, geometry, centring=centring)))
            crystal = None
        elif crystal is not None:
            m = _VECTOR.match(line)
            if m:
                crystal[m.group(1)] = np.array([float(m.group(i)) for i in (2, 3, 4)])
            elif line.startswith("centering"):
                crystal["centering"] = line.partition("=")[2].strip()
        else:
            key, sep, value = line.partition(":") if line.startswith(("Image filename", "Event")) \
                else line.partition("=")
            if sep:
                chunk[key.strip()] = value.strip()
    return entries


def read_stream(path) -> CrystalTable:
    """The crystals of a CrystFEL stream file."""
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise ValueError(f"{path}: cannot read the stream ({e})") from None
    if not text.startswith("CrystFEL stream format"):
        raise ValueError(f"{path}: not a CrystFEL stream (no 'CrystFEL stream format' line)")
    return CrystalTable(parse_stream(text, str(path)), str(path))
