// error.h: the core's internal exception, turned into a redml_status at the C boundary.
#pragma once
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

}  // namespace redml
