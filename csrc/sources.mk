# sources.mk: the C++ core's source lists, the one place that names them. Read by the
# Makefile (include: the fuzz build) and by setup.py (which understands only this subset of
# make: `NAME := words`, $(NAME) references to names defined above, comments).

# Reflection prediction for still shots (lattice.h) and the chunk's lattice section
# (lattice_chunk.h): the decoder predicts a lattice chunk's exact region with it, so it is
# part of the codec. Compiled with the same floating-point rules everywhere (no FMA
# contraction, no fast-math: setup.py's CFLAGS, the Makefile's FUZZ_CXXFLAGS), so that every
# build predicts the same region bit for bit.
REDML_LATTICE_SRC := csrc/lattice.cpp csrc/lattice_chunk.cpp
# The codec (redml.h). The encoder's built-in ROI runs the spot finder (spots.cpp).
REDML_CODEC_SRC := csrc/codec.cpp csrc/container.cpp csrc/entropy.cpp csrc/background.cpp csrc/spots.cpp $(REDML_LATTICE_SRC)
# The spot finder's C API and its radial background profile (redml_spots.h).
REDML_SPOTS_SRC := csrc/spots_api.cpp csrc/radial.cpp
# The JUNGFRAU raw -> photon conversion (redml_jungfrau.h).
REDML_JUNGFRAU_SRC := csrc/jungfrau.cpp
# The learned spot finder's convolution layers (conv.h), used by the Python binding only.
REDML_ML_SRC := csrc/conv.cpp
# The known-cell still indexer (index.h), used by the Python binding only.
REDML_INDEX_SRC := csrc/index.cpp
# External libraries of the codec (-l names).
REDML_LIBS := zstd lz4 xxhash htscodecs

# The two artifacts: the HDF5 filter plugin (the codec only) and the Python extension.
REDML_PLUGIN_SRC := csrc/h5filter.cpp $(REDML_CODEC_SRC)
REDML_PYTHON_SRC := csrc/pybind.cpp $(REDML_CODEC_SRC) $(REDML_SPOTS_SRC) $(REDML_JUNGFRAU_SRC) $(REDML_ML_SRC) $(REDML_INDEX_SRC)
