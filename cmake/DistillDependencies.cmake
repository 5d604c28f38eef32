# The dependencies of distill::distill and its optional targets, shared by the build tree and the
# installed package config, so both resolve them the same way.
include(CMakeFindDependencyMacro)

macro(_distill_find name)
  if(COMMAND find_dependency AND DEFINED CMAKE_FIND_PACKAGE_NAME)
    find_dependency(${name} ${ARGN})
  else()
    find_package(${name} ${ARGN} REQUIRED)
  endif()
endmacro()

_distill_find(Eigen3 3.4 NO_MODULE)
_distill_find(Boost 1.74)
_distill_find(nlohmann_json 3.11)
_distill_find(xtensor)
# OpenMP is optional: without it device::Cpu runs on one thread (detail/parallel.hpp guards _OPENMP).
find_package(OpenMP QUIET COMPONENTS CXX)

function(distill_link_dependencies target)
  target_link_libraries(${target} INTERFACE Eigen3::Eigen Boost::headers nlohmann_json::nlohmann_json xtensor)
  if(OpenMP_CXX_FOUND)
    target_link_libraries(${target} INTERFACE OpenMP::OpenMP_CXX)
  endif()
endfunction()

# An optional dependency can never fail configure: missing, hidden or broken, it is reported by the
# caller in one status line and its features are skipped.
#
# distill_find_optional_config(<Package> [args...]) — a CMake package config. Some configs call
# find_package(... REQUIRED) on their own dependencies (oneDNN's asks for OpenCL), which is fatal
# whatever QUIET says, and CMake cannot catch a fatal error. So the lookup first runs in a throwaway
# CMake process (with this one's search paths and CMAKE_DISABLE_FIND_PACKAGE_* settings); only when
# that succeeds does it run here. Sets <Package>_FOUND; on failure DISTILL_<Package>_PROBE_ERROR holds
# the probe's first error line.
function(_distill_probe_config package result)
  set(${result} FALSE PARENT_SCOPE)
  if(CMAKE_DISABLE_FIND_PACKAGE_${package})
    set(DISTILL_${package}_PROBE_ERROR "disabled by CMAKE_DISABLE_FIND_PACKAGE_${package}" PARENT_SCOPE)
    return()
  endif()
  set(probe "${CMAKE_BINARY_DIR}/CMakeFiles/distill-probe-${package}")
  file(REMOVE_RECURSE "${probe}")
  # the caller's languages (configs may run compile checks: oneDNN's FindOpenCL does) and compilers
  get_property(languages GLOBAL PROPERTY ENABLED_LANGUAGES)
  list(FILTER languages INCLUDE REGEX "^(C|CXX)$")
  if(NOT languages)
    set(languages NONE)
  endif()
  file(WRITE "${probe}/CMakeLists.txt" "cmake_minimum_required(VERSION 3.25)\nproject(distill_probe LANGUAGES ${languages})\n"
                                       "find_package(${package} ${ARGN} CONFIG REQUIRED)\n")
  set(probe_args)
  get_cmake_property(cmake_vars VARIABLES)
  set(package_dirs ${cmake_vars})
  list(FILTER cmake_vars INCLUDE REGEX "^(CMAKE_DISABLE_FIND_PACKAGE_.*|CMAKE_PREFIX_PATH|CMAKE_FIND_ROOT_PATH|CMAKE_LIBRARY_ARCHITECTURE|CMAKE_C_COMPILER|CMAKE_CXX_COMPILER)$")
  list(FILTER package_dirs INCLUDE REGEX "^[A-Za-z0-9]+_(DIR|ROOT)$")
  list(FILTER package_dirs EXCLUDE REGEX "^(CMAKE|PROJECT|distill)_")
  foreach(var ${cmake_vars} ${package_dirs})
    string(REPLACE ";" "\\;" value "${${var}}")
    list(APPEND probe_args "-D${var}=${value}")
  endforeach()
  execute_process(COMMAND "${CMAKE_COMMAND}" -S "${probe}" -B "${probe}/build" ${probe_args}
                  RESULT_VARIABLE failed OUTPUT_QUIET ERROR_VARIABLE probe_error)
  if(failed AND probe_error MATCHES "Could not find a package configuration file")
    return()  # not installed: no error to report
  elseif(failed)
    string(REGEX MATCH "CMake Error[^\n]*\n[^\n]*\n[^\n]*" first "${probe_error}")
    string(REGEX REPLACE "[ \n]+" " " first "${first}")
    set(DISTILL_${package}_PROBE_ERROR "${first}" PARENT_SCOPE)
    return()
  endif()
  set(${result} TRUE PARENT_SCOPE)
endfunction()

macro(distill_find_optional_config package)
  _distill_probe_config(${package} _distill_probe_ok ${ARGN})
  if(_distill_probe_ok)
    find_package(${package} ${ARGN} CONFIG QUIET)
  else()
    set(${package}_FOUND FALSE)
  endif()
endmacro()

# distill_find_optional_pkgconfig(<PREFIX> <module>) — a pkg-config module (cpp-httplib, PCRE2), with
# -DCMAKE_DISABLE_FIND_PACKAGE_<PREFIX>=ON honoured as find_package honours it. Creates
# PkgConfig::<PREFIX> when found.
macro(distill_find_optional_pkgconfig prefix module)
  if(NOT CMAKE_DISABLE_FIND_PACKAGE_${prefix})
    find_package(PkgConfig QUIET)
    if(PkgConfig_FOUND)
      pkg_check_modules(${prefix} QUIET IMPORTED_TARGET ${module})
    endif()
  endif()
endmacro()
