# sources.mk: the C++ core's source lists, the one place that names them. Read by the
# Makefile (include: the fuzz build) and by setup.py (which understands only this subset of
# make: `NAME := words`, $(NAME) references to names defined above, comments).

# The codec (redml.h). The encoder's built-in ROI runs the spot finder (spots.cpp). A chunk's
# lattice section (lattice_chunk.cpp) is decoded by predicting its crystals' reflections
# (lattice.cpp), so the prediction is part of the codec; every build compiles it with the
# same floating-point rules (no FMA contraction, no fast-math: setup.py's CFLAGS and the
# Makefile's FUZZ_CXXFLAGS), so that encoder and decoders predict the same region bit for bit.
# codec.cpp encodes, decode.cpp decodes; the decoder's span loops are built once per SIMD target,
# each in its own file (decode_lanes_*.cpp: small translation units that compile in parallel).
REDML_CODEC_SRC := csrc/codec.cpp csrc/decode.cpp csrc/decode_lanes_portable.cpp csrc/decode_lanes_avx2.cpp csrc/decode_lanes_avx512.cpp csrc/container.cpp csrc/entropy.cpp csrc/entropy_rans.cpp csrc/background.cpp csrc/spots.cpp csrc/lattice.cpp csrc/lattice_chunk.cpp
# The spot finder's C API and its radial background profile (redml_spots.h).
REDML_SPOTS_SRC := csrc/spots_api.cpp csrc/radial.cpp
# The JUNGFRAU raw -> photon conversion (redml_jungfrau.h).
REDML_JUNGFRAU_SRC := csrc/jungfrau.cpp
# The learned spot finder's convolution layers (conv.h), used by the Python binding only.
REDML_ML_SRC := csrc/conv.cpp
# The known-cell still indexer (index.h), used by the Python binding only.
REDML_INDEX_SRC := csrc/index.cpp
# The acquisition indicators' background level and saturated count (levels.h), used by the Python binding only.
REDML_LEVELS_SRC := csrc/levels.cpp
# External libraries of the codec (-l names).
REDML_LIBS := zstd lz4 xxhash htscodecs

# The two artifacts: the HDF5 filter plugin (the codec only) and the Python extension.
REDML_PLUGIN_SRC := csrc/h5filter.cpp $(REDML_CODEC_SRC)
REDML_PYTHON_SRC := csrc/pybind.cpp $(REDML_CODEC_SRC) $(REDML_SPOTS_SRC) $(REDML_JUNGFRAU_SRC) $(REDML_ML_SRC) $(REDML_INDEX_SRC) $(REDML_LEVELS_SRC)
