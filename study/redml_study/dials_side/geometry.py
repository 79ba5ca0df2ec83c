"""The geometry dxtbx reads from an image file, as JSON (run by DIALS's python3).

    python3 geometry.py IMAGE_FILE

Prints beam centre (pixels, fast/slow), distance (mm), pixel size (mm), wavelength (A),
image size (fast, slow), sensor material and thickness (mm), trusted range: what an NXmx
copy of the image needs. One flat panel normal to the beam is assumed (checked).
"""
import json
import sys

from dxtbx.model.experiment_list import ExperimentListFactory

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    experiments = ExperimentListFactory.from_filenames([sys.argv[1]])
    detector, beam = experiments[0].detector, experiments[0].beam
    if len(detector) != 1:
        sys.exit(f"{sys.argv[1]}: {len(detector)} panels; only single-panel detectors are supported")
    panel = detector[0]
    fx, fy = panel.get_beam_centre_px(beam.get_s0())
    normal = panel.get_normal()
    print(json.dumps({
        "beam_x": fx, "beam_y": fy, "distance_mm": panel.get_directed_distance(),
        "pixel_size_mm": panel.get_pixel_size()[0], "wavelength_a": beam.get_wavelength(),
        "image_size": list(panel.get_image_size()), "sensor_material": panel.get_material() or "Si",
        "sensor_thickness_mm": panel.get_thickness(), "trusted_range": list(panel.get_trusted_range()),
        "normal_z": normal[2], "name": panel.get_name() or "",
    }))
