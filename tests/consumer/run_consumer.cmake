# Builds and runs tests/consumer/main.cpp the way a user consumes the library, by MODE:
#   find_package     install the build tree into WORK_DIR/prefix, then find_package(distill CONFIG)
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
if(MODE STREQUAL "find_package")
  run(${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${WORK_DIR}/prefix)
  run(${CMAKE_COMMAND} -S ${consumer} -B ${WORK_DIR}/build -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix
      -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_BUILD_TYPE=Release)
  # the pkg-config file is installed too
  if(NOT EXISTS ${WORK_DIR}/prefix/share/pkgconfig/distill.pc)
    message(FATAL_ERROR "distill.pc was not installed")
  endif()
elseif(MODE STREQUAL "add_subdirectory")
  run(${CMAKE_COMMAND} -S ${consumer}/add_subdirectory -B ${WORK_DIR}/build -DDISTILL_SOURCE_DIR=${SOURCE_DIR}
      -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_BUILD_TYPE=Release)
elseif(MODE STREQUAL "fetchcontent")
  run(${CMAKE_COMMAND} -S ${consumer}/fetchcontent -B ${WORK_DIR}/build -DDISTILL_SOURCE_DIR=${SOURCE_DIR}
      -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_BUILD_TYPE=Release)
elseif(MODE STREQUAL "single_header")
  run(${CXX} -std=c++20 -O2 -fopenmp -isystem /usr/include/eigen3 -I${SOURCE_DIR}/single_include
      ${consumer}/main.cpp -o ${WORK_DIR}/consumer)
  run(${WORK_DIR}/consumer)
  return()
else()
  message(FATAL_ERROR "unknown MODE ${MODE}")
endif()
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(${WORK_DIR}/build/consumer)
