# The dependencies of distill::distill, shared by the build tree and the installed package config,
# so both resolve them the same way.
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
find_package(OpenMP COMPONENTS CXX)

function(distill_link_dependencies target)
  target_link_libraries(${target} INTERFACE Eigen3::Eigen Boost::headers nlohmann_json::nlohmann_json xtensor)
  if(OpenMP_CXX_FOUND)
    target_link_libraries(${target} INTERFACE OpenMP::OpenMP_CXX)
  endif()
endfunction()
