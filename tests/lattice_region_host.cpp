// A stand-alone build of the lattice prediction (csrc/lattice.cpp, csrc/lattice_chunk.cpp) for
// tests/test_lattice_chunk.py: reads "height width n" and n lines of 21 numbers (the fields of
// redml_lattice, as %a hex floats) and a centring letter from stdin, prints the XXH3-64 of the
// region they paint. Built with other compilers and flags than the extension's, it must print
// the hash the extension's encoder stored.
#include <cinttypes>
#include <cstdio>
#include <vector>

#include "lattice_chunk.h"

int main() {
    unsigned height, width, n;
    if (std::scanf("%u %u %u", &height, &width, &n) != 3) return 2;
    std::vector<redml_lattice> models;
    for (unsigned i = 0; i < n; i++) {
        double v[redml::kLatticeDoubles];
        for (double &x : v)
            if (std::scanf("%la", &x) != 1) return 2;
        char c;
        if (std::scanf(" %c", &c) != 1) return 2;
        models.push_back(redml::lattice_model_from_doubles(v, c));
    }
    std::vector<uint8_t> map((size_t)height * width);
    const uint64_t hash = redml::lattice_region(models.data(), models.size(), height, width, map.data(), REDML_E_ARG);
    std::printf("%016" PRIx64 "\n", hash);
    return 0;
}
