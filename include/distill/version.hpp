#pragma once
/// @file version.hpp
/// The library version, as macros (for the preprocessor) and as `distill::version()`.

#define DISTILL_VERSION_MAJOR 0
#define DISTILL_VERSION_MINOR 1
#define DISTILL_VERSION_PATCH 0

namespace distill {
/// The library version as "MAJOR.MINOR.PATCH".
constexpr const char* version() noexcept {
    return "0.1.0";
}
}  // namespace distill
