// decode_lanes_avx2.cpp: the AVX2 build of the decoder's lane loops (x86-64; run where the CPU has it).
#include "pixels.h"
#ifdef REDML_AVX2_DISPATCH
#define REDML_LANES_NS lanes_avx2
#define REDML_LANES_TARGET REDML_TARGET_AVX2
#define REDML_LANES_AVX512 false
#include "decode_lanes_target.h"
#endif
