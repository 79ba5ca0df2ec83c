"""Linear attenuation coefficient of a sensor material (run by DIALS's python3).

    python3 attenuation.py MATERIAL WAVELENGTH_A     # prints mu in 1/mm

The value dxtbx uses for its parallax correction, so simulated spots sit where DIALS
expects them.
"""
import sys

from cctbx.eltbx import attenuation_coefficient

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    table = attenuation_coefficient.get_table(sys.argv[1])
    print(table.mu_at_angstrom(float(sys.argv[2])) / 10.0)
