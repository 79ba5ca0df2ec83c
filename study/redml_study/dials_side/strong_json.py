"""Strong-spot centroids of a DIALS reflection file as JSON (run by DIALS's python3).

    python3 strong_json.py STRONG.REFL OUT.json

OUT.json: {"<experiment id>": [[x, y], ...]} in pixels (fast, slow; pixel centres at +0.5).
"""
import json
import sys

from dials.array_family import flex

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    refl = flex.reflection_table.from_file(sys.argv[1])
    x, y, _ = refl["xyzobs.px.value"].parts()
    out = {}
    for i, xx, yy in zip(refl["id"], x, y):
        out.setdefault(str(i), []).append([xx, yy])
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)
