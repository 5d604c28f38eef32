# A compile-fail check, run by ctest: the control target (the same source with the requirement
# met) must build, and the target must fail with EXPECT on the first diagnostic line that says
# "error:", and with every string of ALSO somewhere in the diagnostics (e.g. the teacher's name).
#   cmake -DBINARY_DIR=<build tree> -DTARGET=<target> -DCONTROL=<target> -DEXPECT=<text> -DALSO=<a;b> -P run_compile_fail.cmake
foreach(var BINARY_DIR TARGET CONTROL EXPECT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_compile_fail.cmake: -D${var}=... is required")
  endif()
endforeach()

execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY_DIR} --target ${CONTROL}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "control target ${CONTROL} does not compile, so the check proves nothing:\n${out}")
endif()

execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY_DIR} --target ${TARGET}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(rc EQUAL 0)
  message(FATAL_ERROR "${TARGET} compiled, but it must not")
endif()
string(REGEX MATCH "[^\n]*error:[^\n]*" first "${out}")
string(FIND "${first}" "${EXPECT}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "first error line of ${TARGET}:\n  ${first}\nexpected it to contain:\n  ${EXPECT}\nfull output:\n${out}")
endif()
foreach(text IN LISTS ALSO)
  string(FIND "${out}" "${text}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "the diagnostics of ${TARGET} do not mention \"${text}\":\n${out}")
  endif()
endforeach()
message(STATUS "${TARGET} fails as documented: ${first}")
