# Builds and runs tests/consumer/main.cpp the way a user consumes the library, by MODE:
#   find_package     install the build tree into WORK_DIR/prefix (the distill command too), then find_package(distill CONFIG)
#   add_subdirectory add_subdirectory(<checkout>)
#   fetchcontent     FetchContent from the checkout's git repository
#   single_header    one plain compiler command with only single_include/ on the include path
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGV}")
  endif()
endfunction()
set(consumer ${SOURCE_DIR}/tests/consumer)
# at -O0: these tests prove how the package is found, compiled and linked; -O0 compiles in two thirds
# of -O2's time and the program's few steps still run in under two seconds
set(consumer_flags -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_FLAGS=-O0)
if(MODE STREQUAL "find_package")
  run(${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${WORK_DIR}/prefix)
  run(${CMAKE_COMMAND} -S ${consumer} -B ${WORK_DIR}/build -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix
      -DCMAKE_CXX_COMPILER=${CXX} ${consumer_flags})
  # the pkg-config file is installed too
  if(NOT EXISTS ${WORK_DIR}/prefix/share/pkgconfig/distill.pc)
    message(FATAL_ERROR "distill.pc was not installed")
  endif()
  # and the distill command, which runs from the prefix
  if(EXISTS ${BINARY_DIR}/apps/distill)
    run(${WORK_DIR}/prefix/bin/distill --version)
    execute_process(COMMAND ${WORK_DIR}/prefix/bin/distill --help OUTPUT_VARIABLE help RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0 OR NOT help MATCHES "SYNOPSIS")
      message(FATAL_ERROR "the installed distill --help failed (${rc}): ${help}")
    endif()
  endif()
elseif(MODE STREQUAL "add_subdirectory")
  run(${CMAKE_COMMAND} -S ${consumer}/add_subdirectory -B ${WORK_DIR}/build -DDISTILL_SOURCE_DIR=${SOURCE_DIR}
      -DCMAKE_CXX_COMPILER=${CXX} ${consumer_flags})
elseif(MODE STREQUAL "fetchcontent")
  run(${CMAKE_COMMAND} -S ${consumer}/fetchcontent -B ${WORK_DIR}/build -DDISTILL_SOURCE_DIR=${SOURCE_DIR}
      -DCMAKE_CXX_COMPILER=${CXX} ${consumer_flags})
elseif(MODE STREQUAL "single_header")
  run(${CXX} -std=c++20 -O0 -fopenmp -isystem /usr/include/eigen3 -I${SOURCE_DIR}/single_include
      ${consumer}/main.cpp -o ${WORK_DIR}/consumer)
  run(${WORK_DIR}/consumer)
  return()
else()
  message(FATAL_ERROR "unknown MODE ${MODE}")
endif()
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(${WORK_DIR}/build/consumer)
if(EXISTS ${WORK_DIR}/build/consumer_http)
  run(${WORK_DIR}/build/consumer_http)
elseif(MODE STREQUAL "find_package" AND EXISTS ${BINARY_DIR}/CMakeFiles/Export)
  file(GLOB_RECURSE http_export ${BINARY_DIR}/CMakeFiles/Export/*distillHttpTargets.cmake)
  if(http_export)
    message(FATAL_ERROR "the build exports distill::http, but the installed package did not provide it")
  endif()
endif()
