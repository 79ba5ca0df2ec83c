// decode_lanes_portable.cpp: the portable build (SSE2 on x86-64) of the decoder's lane loops.
#define REDML_LANES_NS lanes_portable
#define REDML_LANES_TARGET
#define REDML_LANES_AVX512 false
#include "decode_lanes_target.h"
