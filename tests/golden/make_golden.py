"""Writes the golden chunks of format v1 and the golden HDF5 file (run once; never
regenerate existing files).

Each case stores the input frame, the chunk and the frame the v1 decoder returned when
the chunk was written. tests/test_golden.py checks that today's decoder still returns
exactly that frame, so old files stay readable as the code evolves.

hdf5_v1/settings.h5 holds one group per H5_CASES entry, written through the HDF5 filter:
`data` (redml, two frames, the filter's cd_values as this version wrote them; its
attribute `redml_settings` is the settings' JSON configuration), `input` (the frames) and
`decoded` (what the filter returned when the file was written), both gzip.

    python tests/golden/make_golden.py     # only writes cases that do not exist yet
"""
import json
import zlib
from pathlib import Path

import h5py
import numpy as np

import redml_reduce as rr

OUT = Path(__file__).parent / "v1"
H5_OUT = Path(__file__).parent / "hdf5_v1" / "settings.h5"

CASES = {
    "u16_lossless_rans": ("uint16", 0, {}),
    "u16_q1_rans": ("uint16", 1.0, {}),
    "u16_q4_lz4": ("uint16", 4.0, {"codec": "lz4"}),
    "i16_q2_zstd_byte": ("int16", 2.0, {"codec": "zstd", "shuffle": "byte"}),
    "i32_lossless_zstd": ("int32", 0, {"codec": "zstd"}),
    "i32_q2_gaps": ("int32", 2.0, {"tile": 16}),
    "u32_sparse": ("uint32", "sparse", {}),
    "u32_sparse_noise": ("uint32", "sparse", {"sparse_noise": True}),
    "f32_lossless": ("float32", 0, {}),
    "f32_q1_gain": ("float32", 1.0, {"gain": 2.5}),
    # added with the conditional reconstructions (recon codes 2 and 3 of format v1)
    "u16_q2_mean": ("uint16", 2.0, {"recon": "mean"}),
    "i32_q4_draw_gaps": ("int32", 4.0, {"recon": "draw"}),
    "u16_q4_draw_lowcount": ("uint16", 4.0, {"recon": "draw"}),
    # added with integrating detectors (markers, and the header's read_noise of format v1)
    "i16_q2_integrating_midpoint": ("int16", 2.0, {"gain": 20.0, "markers": "extremes", "read_noise": 4.0}),
    "i16_q4_integrating_draw": ("int16", 4.0, {"gain": 20.0, "markers": "extremes", "read_noise": 4.0,
                                               "recon": "draw"}),
    "f32_q2_integrating_mean": ("float32", 2.0, {"markers": "gaps", "read_noise": "auto", "recon": "mean"}),
    # added with the lattice section (section type 5 of format v1: crystal models, not a mask)
    "u16_q8_draw_lattice": ("uint16", 8.0, {"recon": "draw", "roi": "lattice"}),
    "i32_q4_draw_lattice_two_crystals_gaps": ("int32", 4.0, {"recon": "draw", "roi": "lattice"}),
    "u16_lossless_lattice_lz4": ("uint16", 0, {"codec": "lz4", "roi": "lattice"}),
    # added with the sparse noisy background of integrating data (the header's read_noise in
    # sparse chunks: Poisson plus Gaussian read noise; decoders before it refuse these chunks)
    "i16_sparse_noise_integrating": ("int16", "sparse", {"sparse_noise": True, "gain": 20.0, "markers": "extremes",
                                                         "read_noise": 4.0}),
    "f32_sparse_noise_integrating": ("float32", "sparse", {"sparse_noise": True, "markers": "gaps",
                                                           "read_noise": "auto"}),
}

# The lattice cases' detector: 45 x 67 pixels around the beam, crystals with c* near the beam
# (their hk0 zone lands on the frame).
LATTICE_GEOMETRY = dict(beam_x=31.3, beam_y=24.6, distance_mm=60.0, pixel_size_mm=0.172, wavelength_a=1.0)


def lattice_region_for(name):
    """The golden lattice region: one crystal (P), or two (the second I-centred, with the
    parallax of a 450 um silicon sensor and a resolution limit), discs of 2.5 px."""
    from redml_reduce.background import BeamGeometry
    from redml_reduce.lattice import Crystal, LatticeRegion, LatticeSettings

    c, s = np.cos(0.4), np.sin(0.4)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    crystals = [Crystal(rot @ np.diag([1 / 48.0, 1 / 52.0, 1 / 80.0]))]
    if name.endswith("gaps"):
        tilt = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(0.03), -np.sin(0.03)], [0.0, np.sin(0.03), np.cos(0.03)]])
        crystals.append(Crystal(tilt @ np.diag([1 / 40.0, 1 / 40.0, 1 / 95.0]), centring="I",
                                sensor_mu_per_mm=3.96, sensor_thickness_mm=0.45))
    settings = LatticeSettings(radius=2.5, d_min=6.0 if name.endswith("gaps") else 0.0)
    return LatticeRegion(crystals, BeamGeometry(**LATTICE_GEOMETRY), settings)

# The golden HDF5 file: every mode, recon, codec and shuffle, and the other settings away
# from their defaults (cd_values layout 1).
H5_CASES = {
    "u16_lossless_rans": ("uint16", 0, {}),
    "u16_lossless_lz4_bit": ("uint16", 0, {"codec": "lz4", "shuffle": "bit", "block_elems": 1024}),
    "i32_lossless_zstd_none": ("int32", 0, {"codec": "zstd", "shuffle": "none", "level": -3}),
    "f32_lossless": ("float32", 0, {}),
    "u16_q1_settings": ("uint16", 1.0, {"tile": 16, "roi_snr": 4.5, "roi_margin": 3, "seed": 4000000000,
                                         "mu_min": 0.5}),
    "f32_q1_gain": ("float32", 1.0, {"gain": 2.5}),
    "u16_q2_mean": ("uint16", 2.0, {"recon": "mean"}),
    "i32_q4_draw_zstd": ("int32", 4.0, {"recon": "draw", "codec": "zstd", "level": 9}),
    "u32_sparse": ("uint32", "sparse", {}),
    "u16_sparse_noise_lz4": ("uint16", "sparse", {"sparse_noise": True, "codec": "lz4", "shuffle": "byte"}),
}


def integrating_frame_for(name, dtype):
    """Pedestal-subtracted photons with 0.2 photon of read noise at 1.5 photons/px (int16:
    20 ADU per photon, module gap at the dtype's minimum; float32: photons, gaps -1)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    lam = np.full((45, 67), 1.5)
    lam[20:23, 30:33] += 300.0  # a spot
    x = rng.poisson(lam) + 0.2 * rng.standard_normal(lam.shape)
    if dtype == "float32":
        x[:, 40:42] = -1.0
        return x.astype(dtype)
    x = np.rint(x * 20)
    x[:, 40:42] = np.iinfo(dtype).min
    return x.astype(dtype)


def frame_for(name, dtype):
    if "integrating" in name:
        return integrating_frame_for(name, dtype)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    lam = np.full((45, 67), 0.8 if "lowcount" in name else 60.0)
    lam[20:23, 30:33] += 3000.0  # a spot
    x = rng.poisson(lam).astype(np.float64)
    if dtype == "float32":
        x = x * 2.5 + rng.uniform(-0.5, 0.5, x.shape)
        x[0, 0] = np.nan
    if dtype in ("int32", "int16"):
        x[:, 40:42] = -1  # gap
    return x.astype(dtype)


def make_hdf5():
    if H5_OUT.exists():
        return
    H5_OUT.parent.mkdir(exist_ok=True)
    with h5py.File(H5_OUT, "w", track_order=True) as f:
        for name, (dtype, q, kw) in H5_CASES.items():
            frames = np.stack([frame_for(f"{name}.{k}", dtype) for k in range(2)])
            g = f.create_group(name)
            d = g.create_dataset("data", data=frames, chunks=(1, *frames.shape[1:]), **rr.Redml(q, **kw))
            d.attrs["redml_settings"] = json.dumps(rr.CodecSettings(q=q, **kw).to_config())
            g.create_dataset("input", data=frames, compression="gzip", shuffle=True)
    with h5py.File(H5_OUT, "a") as f:  # reopened: read through the filter, not HDF5's chunk cache
        for name in H5_CASES:
            f[name].create_dataset("decoded", data=f[name]["data"][...], compression="gzip", shuffle=True)
    print("wrote", H5_OUT, H5_OUT.stat().st_size, "bytes")


def main():
    make_hdf5()
    OUT.mkdir(exist_ok=True)
    for name, (dtype, q, kw) in CASES.items():
        if (OUT / f"{name}.rdml").exists():
            continue
        frame = frame_for(name, dtype)
        if kw.get("roi", "").startswith("lattice"):
            kw = {**kw, "roi": lattice_region_for(name)}
        chunk = rr.encode(frame, q, **kw)
        np.save(OUT / f"{name}.input.npy", frame)
        (OUT / f"{name}.rdml").write_bytes(chunk)
        np.save(OUT / f"{name}.decoded.npy", rr.decode(chunk))
        print("wrote", name, len(chunk), "bytes")


if __name__ == "__main__":
    main()
