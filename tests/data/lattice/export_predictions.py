"""DIALS's predicted positions of the integrated reflections, as plain arrays (run by
DIALS's python3; see README.md here).

    python3 export_predictions.py INTEGRATED.EXPT INTEGRATED.REFL OUT.npz

OUT.npz: image (n,) int64 (the experiment's image file name, as an index into `images`),
images (m,) str, hkl (n, 3) int32, xy (n, 2) float64 (xyzcal.px: pixels, fast and slow,
pixel centres at +0.5; DIALS corrects them for the sensor's parallax) and xy_mm (n, 2)
float64 (xyzcal.mm: millimetres on the panel, no parallax) of every reflection flagged
integrated_sum.
"""
import os
import sys

import numpy as np
from dials.array_family import flex
from dxtbx.model.experiment_list import ExperimentListFactory


def main(expt, refl, out):
    experiments = ExperimentListFactory.from_json_file(expt, check_format=False)
    table = flex.reflection_table.from_file(refl)
    table = table.select(table.get_flags(table.flags.integrated_sum))
    images = [os.path.basename(e.imageset.get_path(0)) for e in experiments]
    x, y, _ = table["xyzcal.px"].parts()
    xmm, ymm, _ = table["xyzcal.mm"].parts()
    hkl = np.array(table["miller_index"].as_vec3_double(), dtype=np.float64).reshape(-1, 3).round().astype(np.int32)
    np.savez_compressed(out, image=np.array(table["id"], dtype=np.int64), images=np.array(images), hkl=hkl,
                        xy=np.stack([np.array(x), np.array(y)], axis=1),
                        xy_mm=np.stack([np.array(xmm), np.array(ymm)], axis=1))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
