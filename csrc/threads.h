// threads.h: a minimal parallel-for over index ranges (std::thread, no OpenMP runtime,
// so the HDF5 plugin behaves in any host process, forked or not).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace redml {

// Number of worker threads: explicit > 0, else REDML_NUM_THREADS, else all cores.
inline int resolve_threads(int requested) {
    if (requested > 0) return requested;
    if (const char *env = std::getenv("REDML_NUM_THREADS")) {
        int n = std::atoi(env);
        if (n > 0) return n;
    }
    unsigned hc = std::thread::hardware_concurrency();
    return hc ? (int)hc : 1;
}

// Calls fn(task) for task in [0, ntasks) on up to nthreads threads. The first exception
// thrown by a task is rethrown on the calling thread after all workers have joined.
template <class Fn>
void parallel_for(size_t ntasks, int nthreads, Fn fn) {
    size_t nworkers = std::min<size_t>(ntasks, (size_t)std::max(1, nthreads));
    if (nworkers <= 1) {
        for (size_t t = 0; t < ntasks; t++) fn(t);
        return;
    }
    std::mutex m;
    size_t next = 0;
    std::exception_ptr error;
    auto worker = [&]() {
        for (;;) {
            size_t t;
            {
                std::lock_guard<std::mutex> lock(m);
                if (next >= ntasks || error) return;
                t = next++;
            }
            try {
                fn(t);
            } catch (...) {
                std::lock_guard<std::mutex> lock(m);
                if (!error) error = std::current_exception();
            }
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(nworkers - 1);
    try {
        for (size_t i = 0; i + 1 < nworkers; i++) pool.emplace_back(worker);
    } catch (...) {
        // Could not start more threads: the ones started and this one finish the work.
    }
    worker();
    for (auto &th : pool) th.join();
    if (error) std::rethrow_exception(error);
}

// Splits rows [0, height) into bands of rows_per_band and calls fn(band, y0, y1) for each,
// in parallel. Bands are the unit of work of every per-pixel stage.
template <class Fn>
void for_row_bands(uint32_t height, uint32_t rows_per_band, int nthreads, Fn fn) {
    size_t nbands = (height + rows_per_band - 1) / rows_per_band;
    parallel_for(nbands, nthreads, [&](size_t b) {
        uint32_t y0 = (uint32_t)(b * rows_per_band);
        fn(b, y0, std::min(height, y0 + rows_per_band));
    });
}

}  // namespace redml
