"""Inputs of a recompression: what a path names, and the frames it holds.

Kinds of input (`find_inputs` turns paths into a sorted list of `Input`):

- HDF5/NXmx files (.h5, .hdf5, .nxs, .nx5, .cxi): the frames of `entry/data/data` (any
  filter h5py and hdf5plugin read: bitshuffle-LZ4, gzip, uncompressed, redml), or of
  `entry/data/data_000001`, `data_000002`, ... in an Eiger master file (external links to
  its data files), or of a top-level `data`, or of the dataset named by `dataset=`.
- Eiger data files (`NAME_data_000001.h5`) beside their `NAME_master.h5` in a folder are
  part of the master's input, not inputs of their own.
- Image files fabio reads (CBF, SMV .img, MarCCD .mccd, possibly .gz/.bz2 compressed):
  grouped by template (the name without its trailing frame number), one input per
  template, frames in name order. On a command line (`inputs_from_specs`) image files
  keep the order given, and any other format fabio reads (TIFF, EDF, ...) is taken too.

Folders are searched (not recursively) for both kinds. h5py objects never leave the
process that opened them: an Input holds only paths, and `open_frames` opens the files.

This is the one frame reader of the package: the command line (`inputs_from_specs`,
`iter_frames`: files, folders and FILE.h5:/dataset[:index]), the recompression, the yield
study and the JUNGFRAU tools read their frames through it.
"""
from __future__ import annotations

import errno
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Input", "find_inputs", "open_frames", "image_datasets", "inputs_from_specs", "iter_frames", "parse_spec",
           "HDF5_SUFFIXES", "IMAGE_SUFFIXES"]

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi")
IMAGE_SUFFIXES = (".cbf", ".img", ".smv", ".mccd")
_PACKED = ("", ".gz", ".bz2")
_EIGER_DATA = re.compile(r"^(?P<prefix>.+)_data_\d{6}\.h5$")
_FRAME_NUMBER = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)$")
_SPEC = re.compile(r"^(?P<path>.+?(?:%s)):(?P<dataset>[^:]*)(?::(?P<index>-?\d+))?$"
                   % "|".join(re.escape(s) for s in HDF5_SUFFIXES), re.IGNORECASE)


@dataclass(frozen=True)
class Input:
    """One input of a recompression (one output file).

    kind: "hdf5" (files[0] is the HDF5 file; `dataset`, if set, the image dataset) or
    "images" (files: one image file per frame, in order). name: the output's base name.
    """

    kind: str
    name: str
    files: tuple
    dataset: str | None = None

    @property
    def label(self) -> str:
        """How reports name this input."""
        if self.kind == "images" and len(self.files) > 1:
            return f"{self.files[0]} (+{len(self.files) - 1} images)"
        return self.files[0]

    def signature(self) -> list:
        """Identity of the input files on disk (paths, sizes, modification times), for resuming.
        Eiger data files linked from a master are included."""
        paths = list(self.files)
        if self.kind == "hdf5":
            paths += [str(p) for p in eiger_data_files(self.files[0])]
        out = []
        for p in paths:
            st = os.stat(p)
            out.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
        return out

    def bytes_on_disk(self) -> int:
        return sum(size for _, size, _ in self.signature())

    def to_json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "files": list(self.files), "dataset": self.dataset}


def _suffix_kind(path: Path):
    name = path.name.lower()
    for pack in _PACKED:
        if pack and not name.endswith(pack):
            continue
        stem = name[: len(name) - len(pack)] if pack else name
        if not pack and stem.endswith(HDF5_SUFFIXES):
            return "hdf5", stem
        if stem.endswith(IMAGE_SUFFIXES):
            return "images", stem
    return None, name


def eiger_data_files(master) -> list:
    """Files an Eiger-style master reaches through external links in entry/data."""
    import h5py

    out = []
    try:
        with h5py.File(master, "r") as f:
            grp = f.get("entry/data")
            if not isinstance(grp, h5py.Group):
                return []
            for name in sorted(grp):
                link = grp.get(name, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    p = Path(link.filename)
                    p = p if p.is_absolute() else Path(master).parent / p
                    if p.exists() and str(p) not in out:
                        out.append(str(p))
    except OSError:
        return []
    return out


def find_inputs(paths, dataset: str | None = None) -> list:
    """Inputs named by files and folders (see the module docstring), sorted by path;
    output names made unique. Raises FileNotFoundError for a path that does not exist and
    ValueError for a file of an unknown kind given explicitly."""
    hdf5, images = [], {}
    for p in map(Path, paths):
        if p.is_dir():
            entries = sorted(e for e in p.iterdir() if e.is_file())
            masters = {e.name[: -len("_master.h5")] for e in entries if e.name.endswith("_master.h5")}
            for e in entries:
                kind, stem = _suffix_kind(e)
                m = _EIGER_DATA.match(e.name)
                if kind == "hdf5" and m and m.group("prefix") in masters:
                    continue  # read through its master
                if kind == "hdf5":
                    hdf5.append(e)
                elif kind == "images":
                    images.setdefault(_template(e, stem), []).append(e)
        elif p.is_file():
            kind, stem = _suffix_kind(p)
            if kind == "hdf5":
                hdf5.append(p)
            elif kind == "images":
                images.setdefault(_template(p, stem), []).append(p)
            else:
                raise ValueError(f"{p}: not an HDF5 file ({', '.join(HDF5_SUFFIXES)}) or an image "
                                 f"({', '.join(IMAGE_SUFFIXES)}, optionally .gz/.bz2)")
        else:
            raise FileNotFoundError(errno.ENOENT, "no such file or folder", str(p))
    found = [Input("hdf5", _hdf5_name(p), (str(p),), dataset) for p in sorted(set(hdf5))]
    for _, files in sorted(images.items()):
        found.append(_images_input(sorted(set(files))))
    if not found:
        raise ValueError(f"no inputs in {', '.join(map(str, paths))}: no HDF5 files ({', '.join(HDF5_SUFFIXES)}) "
                         f"or images ({', '.join(IMAGE_SUFFIXES)})")
    return _unique_names(sorted(found, key=lambda i: i.files[0]))


def _hdf5_name(p: Path) -> str:
    name = p.name
    for suffix in ("_master.h5",) + HDF5_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def parse_spec(spec) -> tuple:
    """(path, dataset, index) of FILE.h5:/dataset[:index]; (spec, None, None) for anything
    else (a file or folder for find_inputs)."""
    m = _SPEC.match(str(spec))
    if m is None:
        return str(spec), None, None
    index = m.group("index")
    return m.group("path"), m.group("dataset") or None, None if index is None else int(index)


def inputs_from_specs(specs, dataset: str | None = None) -> list:
    """[(Input, frame index or None for all frames)] named on a command line, in the given
    order, each spec resolved on its own: a folder as find_inputs sees it (its contents
    sorted), an HDF5 file, an image file (consecutive images of one template are one
    input; a suffix other than the known ones is left to fabio), or FILE.h5:/dataset[:index]
    for one dataset (and one frame of it)."""
    out = []
    for spec in specs:
        path, dset, index = parse_spec(spec)
        p = Path(path)
        if path != str(spec) or (p.is_file() and _suffix_kind(p)[0] == "hdf5"):
            if not p.is_file():
                raise FileNotFoundError(errno.ENOENT, "no such file", path)
            out.append((Input("hdf5", _hdf5_name(p), (path,), dset or dataset), index))
        elif p.is_file():
            prev = out[-1][0] if out and out[-1][1] is None else None
            if prev is not None and prev.kind == "images" and _same_series(Path(prev.files[-1]), p):
                out[-1] = (_images_input([*map(Path, prev.files), p]), None)
            else:
                out.append((_images_input([p]), None))
        else:
            out.extend((inp, None) for inp in find_inputs([spec], dataset))  # a folder (or a missing path)
    names = _unique_names([inp for inp, _ in out])
    return [(inp, index) for inp, (_, index) in zip(names, out)]


def _image_template(p: Path):
    """(folder, prefix, extension) shared by the frames of one image series."""
    return _template(p, _suffix_kind(p)[1])


def _same_series(a: Path, b: Path) -> bool:
    return _image_template(a) == _image_template(b)


def _images_input(files) -> Input:
    """One input of image files (frames in the order given), named after their template."""
    name = _image_template(Path(files[0]))[1].rstrip("_.-") or "images"
    return Input("images", name, tuple(str(f) for f in files))


def iter_frames(specs, dataset: str | None = None, modules: bool = False):
    """Every frame named by `specs` (see inputs_from_specs), in order, one at a time.
    modules: a 4-D dataset is a stack of (modules, height, width) frames (raw JUNGFRAU)."""
    for inp, index in inputs_from_specs(specs, dataset):
        with open_frames(inp, modules=modules) as frames:
            if index is None:
                yield from frames
            else:
                yield frames.read(len(frames) + index if index < 0 else index)[0]


def _template(path: Path, stem: str):
    base, _, ext = stem.rpartition(".")
    m = _FRAME_NUMBER.match(base)
    prefix = m.group("prefix") if m else base
    return str(path.parent), prefix, ext


def _unique_names(inputs):
    seen, out = {}, []
    for inp in inputs:
        n = seen.get(inp.name, 0)
        seen[inp.name] = n + 1
        out.append(inp if n == 0 else Input(inp.kind, f"{inp.name}_{n + 1}", inp.files, inp.dataset))
    return out


def image_datasets(f, dataset: str | None = None) -> list:
    """Paths of the image datasets of an open HDF5 file, in frame order."""
    import h5py

    if dataset is not None:
        if not isinstance(f.get(dataset), h5py.Dataset):
            raise KeyError(f"{f.filename}: no dataset {dataset!r}")
        return [dataset]
    if isinstance(f.get("entry/data/data"), h5py.Dataset):
        return ["entry/data/data"]
    grp = f.get("entry/data")
    if isinstance(grp, h5py.Group):
        names = sorted(n for n in grp if re.fullmatch(r"data_\d{6}", n))
        if names:
            return [f"entry/data/{n}" for n in names]
    if isinstance(f.get("data"), h5py.Dataset):
        return ["data"]
    raise KeyError(f"{f.filename}: no entry/data/data, Eiger entry/data/data_NNNNNN or data dataset; "
                   "name the image dataset (dataset=, --dataset, FILE.h5:/dataset)")


class Frames:
    """The frames of one input, opened in this process: len(), shape, dtype (HDF5: known
    at once; images: from the first frame read), read(i) -> (frame, header) where header
    is the image file's header as JSON text (None for HDF5 inputs). modules: a 4-D
    dataset is a stack of 3-D frames (raw JUNGFRAU modules); frames are 2-D otherwise."""

    def __init__(self, inp: Input, modules: bool = False):
        self.input = inp
        self._ndims = (2, 3, 4) if modules else (2, 3)
        self._file = None
        self._segments = []  # HDF5: (first frame, h5py dataset)
        self.shape = self.dtype = None
        if inp.kind == "hdf5":
            try:
                self._open_hdf5()
            except BaseException:
                self.close()
                raise
        else:
            self.count = len(inp.files)

    def _open_hdf5(self):
        import h5py
        import hdf5plugin  # noqa: F401  (bitshuffle-LZ4 and the other filters of detector files)

        path = self.input.files[0]
        try:
            self._file = h5py.File(path, "r")
        except OSError as e:
            if not os.path.isfile(path):
                raise
            raise OSError(f"{path}: not a readable HDF5 file ({e})") from None
        first = 0
        for name in image_datasets(self._file, self.input.dataset):
            d = self._file[name]
            if d.ndim not in self._ndims:
                raise ValueError(f"{path}:{name} has {d.ndim} dimensions; frames are 2-D")
            self._segments.append((first, d))
            first += 1 if d.ndim == 2 else d.shape[0]
        shapes = {d.shape if d.ndim == 2 else d.shape[1:] for _, d in self._segments}
        dtypes = {d.dtype for _, d in self._segments}
        if len(shapes) > 1 or len(dtypes) > 1:
            raise ValueError(f"{path}: image datasets differ in frame shape or dtype: {shapes} {dtypes}")
        self.count = first
        self.shape, self.dtype = shapes.pop(), dtypes.pop()

    def __len__(self):
        return self.count

    def __iter__(self):
        """The frames, in order (without headers)."""
        for i in range(self.count):
            yield self.read(i)[0]

    def read(self, i: int):
        if not 0 <= i < self.count:
            raise IndexError(f"{self.input.label}: no frame {i} (it has {self.count})")
        if self.input.kind == "hdf5":
            for first, d in reversed(self._segments):
                if i >= first:
                    return (d[...] if d.ndim == 2 else d[i - first]), None
        import fabio

        path = self.input.files[i]
        try:
            img = fabio.open(path)
            data = np.asarray(img.data)
            header = json.dumps({str(k): str(v) for k, v in img.header.items()}, sort_keys=True)
        except Exception as e:  # fabio raises many kinds for a bad file
            raise ValueError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None
        if data.ndim != 2:
            raise ValueError(f"{path}: image has {data.ndim} dimensions")
        if self.shape is None:
            self.shape, self.dtype = data.shape, data.dtype
        elif data.shape != self.shape or data.dtype != self.dtype:
            raise ValueError(f"{path}: {data.shape} {data.dtype} image in a series of {self.shape} {self.dtype}")
        return data, header

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


@contextmanager
def open_frames(inp: Input, modules: bool = False):
    frames = Frames(inp, modules)
    try:
        yield frames
    finally:
        frames.close()
