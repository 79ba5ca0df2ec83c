// error.h: the core's internal exception, turned into a redml_status at the C boundary.
#pragma once
#include <new>
#include <stdexcept>
#include <string>
#include "redml.h"

namespace redml {

struct Error : std::runtime_error {
    redml_status status;
    Error(redml_status s, const std::string &msg) : std::runtime_error(msg), status(s) {}
};

[[noreturn]] inline void fail(redml_status s, const std::string &msg) { throw Error(s, msg); }
inline void check(bool ok, redml_status s, const char *msg) {
    if (!ok) fail(s, msg);
}

// The message of the last failed C API call on the calling thread (redml_last_error).
std::string &last_error();

// Runs fn at the C boundary: exceptions become a status code and last_error().
template <class Fn>
redml_status guarded(Fn fn) {
    try {
        fn();
        last_error().clear();
        return REDML_OK;
    } catch (const Error &e) {
        last_error() = e.what();
        return e.status;
    } catch (const std::bad_alloc &) {
        last_error() = "out of memory";
        return REDML_E_NOMEM;
    } catch (const std::exception &e) {
        last_error() = e.what();
        return REDML_E_INTERNAL;
    } catch (...) {
        last_error() = "unknown internal error";
        return REDML_E_INTERNAL;
    }
}

}  // namespace redml
