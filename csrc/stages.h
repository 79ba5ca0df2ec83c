// stages.h: optional per-stage times of the encoder, for benchmarks (a debug aid, not
// part of the C API). Off by default: a disabled mark costs one thread-local load.
// Times are the calling thread's CPU time: meaningful with nthreads = 1, where every
// stage runs on the calling thread.
#pragma once
#include <time.h>

#include <string>
#include <utility>
#include <vector>

namespace redml {

// The calling thread's record: while `enabled`, each encode clears `ms` and appends
// (stage, milliseconds) in pipeline order.
struct StageTimes {
    bool enabled = false;
    std::vector<std::pair<std::string, double>> ms;
    double last = 0;  // ms
};

inline double thread_cpu_ms() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

inline StageTimes &stage_times() {
    thread_local StageTimes t;
    return t;
}

// Starts a new record (the encoder's first step).
inline void stage_begin() {
    StageTimes &t = stage_times();
    if (!t.enabled) return;
    t.ms.clear();
    t.last = thread_cpu_ms();
}

// Ends a stage: the time since the previous mark on this thread is added to `name`.
inline void stage_mark(const char *name) {
    StageTimes &t = stage_times();
    if (!t.enabled) return;
    double now = thread_cpu_ms();
    double ms = now - t.last;
    t.last = now;
    for (auto &entry : t.ms)
        if (entry.first == name) {
            entry.second += ms;
            return;
        }
    t.ms.emplace_back(name, ms);
}

}  // namespace redml
