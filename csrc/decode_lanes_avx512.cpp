// decode_lanes_avx512.cpp: the AVX-512 build of the decoder's lane loops (x86-64; run where the CPU has it).
#include "pixels.h"
#ifdef REDML_AVX512_DISPATCH
#define REDML_LANES_NS lanes_avx512
#define REDML_LANES_TARGET REDML_TARGET_AVX512
#define REDML_LANES_AVX512 true
#include "decode_lanes_target.h"
#endif
