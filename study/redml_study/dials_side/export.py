"""DIALS results as plain arrays (run by DIALS's python3).

    python3 export.py IMPORTED.EXPT OUT.npz [strong=STRONG.REFL] [indexed=INDEXED.EXPT]
                      [integrated=INTEGRATED.EXPT:INTEGRATED.REFL ...]

Images are numbered by their order in IMPORTED.EXPT (one still per experiment). OUT.npz:
strong_per_image (n,) int; strong_image, strong_x, strong_y: each strong spot's image and
centroid (pixels, fast and slow; pixel centres at +0.5); indexed_images (m,) int (images with at least one crystal),
and integrated: image, h, k, l, intensity, variance (summation integration, reflections
flagged integrated_sum) and x, y (predicted position xyzcal.px), concatenated over every
INTEGRATED pair.
"""
import sys

import numpy as np
from dials.array_family import flex
from dxtbx.model.experiment_list import ExperimentListFactory


def image_key(imageset, j):
    """(file, frame in that file) of image j of an image set. A set of one file per image
    (CBF) counts its indices across its files, so the frame is then 0."""
    frame = int(imageset.indices()[j]) if len(imageset.paths()) == 1 else 0
    return imageset.get_path(j), frame


def image_keys(experiments):
    """The images of an experiment list, each once, in order."""
    keys, seen = [], set()
    for e in experiments:
        if id(e.imageset) in seen:
            continue
        seen.add(id(e.imageset))
        keys.extend(image_key(e.imageset, j) for j in range(len(e.imageset)))
    return keys


def main(imported, out, *args):
    opts = {}
    for a in args:
        key, _, value = a.partition("=")
        opts.setdefault(key, []).append(value)
    keys = image_keys(ExperimentListFactory.from_json_file(imported, check_format=False))
    number = {k: i for i, k in enumerate(keys)}
    result = {"strong_per_image": np.zeros(len(keys), np.int64), "indexed_images": np.zeros(0, np.int64)}
    for path in opts.get("strong", []):
        strong = flex.reflection_table.from_file(path)
        ids = np.array(strong["id"], dtype=np.int64)
        result["strong_per_image"] = np.bincount(ids, minlength=len(keys))[: len(keys)]
        x, y, _ = strong["xyzobs.px.value"].parts()
        result["strong_image"], result["strong_x"], result["strong_y"] = ids, np.array(x), np.array(y)
    for path in opts.get("indexed", []):
        el = ExperimentListFactory.from_json_file(path, check_format=False)
        result["indexed_images"] = np.array(sorted({number[image_key(e.imageset, 0)] for e in el}), np.int64)
    cols = {c: [] for c in ("image", "h", "k", "l", "intensity", "variance", "x", "y")}
    for pair in opts.get("integrated", []):
        expt_path, refl_path = pair.split(":")
        el = ExperimentListFactory.from_json_file(expt_path, check_format=False)
        refl = flex.reflection_table.from_file(refl_path)
        refl = refl.select(refl.get_flags(refl.flags.integrated_sum))
        if refl.size() == 0:
            continue
        image_of = np.array([number[image_key(e.imageset, 0)] for e in el], np.int64)
        hkl = np.array(refl["miller_index"].as_vec3_double(), dtype=np.float64).reshape(-1, 3).round().astype(np.int64)
        cols["image"].append(image_of[np.array(refl["id"], dtype=np.int64)])
        cols["h"].append(hkl[:, 0])
        cols["k"].append(hkl[:, 1])
        cols["l"].append(hkl[:, 2])
        cols["intensity"].append(np.array(refl["intensity.sum.value"], dtype=np.float64))
        cols["variance"].append(np.array(refl["intensity.sum.variance"], dtype=np.float64))
        x, y, _ = refl["xyzcal.px"].parts()
        cols["x"].append(np.array(x, dtype=np.float64))
        cols["y"].append(np.array(y, dtype=np.float64))
    for c, parts in cols.items():
        result["integrated_" + c] = np.concatenate(parts) if parts else np.zeros(0)
    np.savez(out, **result)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
