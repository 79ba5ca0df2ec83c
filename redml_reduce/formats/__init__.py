"""What redml chunks are stored in and read from: the HDF5 filter (h5filter), the
frame-by-frame writer (writer) and its NXmx metadata (nxmx), the numcodecs and zarr codecs
and the zarr view of HDF5 files (numcodecs_codec, zarr_codec, zarr_view), CXI peak lists
(peaklist) and the one frame reader (sources).

Nothing is imported here: each module loads its own optional dependencies (zarr, numcodecs).
"""
