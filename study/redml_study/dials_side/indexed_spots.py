"""Positions of the strong spots that index (run by DIALS's python3).

    python3 indexed_spots.py IMPORTED.EXPT INDEXED.EXPT INDEXED.REFL OUT.npz

OUT.npz: image, x, y (pixels, fast and slow; pixel centres at +0.5) of every reflection of
INDEXED.REFL flagged `indexed`; images numbered by their order in IMPORTED.EXPT.
"""
import sys

import numpy as np
from dials.array_family import flex
from dxtbx.model.experiment_list import ExperimentListFactory

from export import image_key, image_keys


def main(imported, indexed_expt, indexed_refl, out):
    keys = image_keys(ExperimentListFactory.from_json_file(imported, check_format=False))
    number = {k: i for i, k in enumerate(keys)}
    el = ExperimentListFactory.from_json_file(indexed_expt, check_format=False)
    image_of = np.array([number[image_key(e.imageset, 0)] for e in el], np.int64)
    refl = flex.reflection_table.from_file(indexed_refl)
    refl = refl.select(refl.get_flags(refl.flags.indexed))
    ids = np.array(refl["id"], dtype=np.int64)
    x, y, _ = refl["xyzobs.px.value"].parts()
    np.savez(out, image=image_of[ids] if len(ids) else np.zeros(0, np.int64), x=np.array(x), y=np.array(y))


if __name__ == "__main__":
    main(*sys.argv[1:])
