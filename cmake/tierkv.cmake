# Helpers that declare one library per folder, with tests beside the code.
#
# tierkv_cc_library(NAME name HDRS ... SRCS ... DEPS ...)
# tierkv_cc_binary(NAME name SRCS ... DEPS ...)
# tierkv_cc_test(NAME name SRCS ... DEPS ... [LABELS ...] [TIMEOUT s] [GPU])

function(tierkv_set_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers>)
endfunction()

function(tierkv_cc_library)
  cmake_parse_arguments(L "" "NAME" "HDRS;SRCS;DEPS" ${ARGN})
  if(L_SRCS)
    add_library(${L_NAME} STATIC ${L_SRCS} ${L_HDRS})
    target_include_directories(${L_NAME} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
    target_link_libraries(${L_NAME} PUBLIC ${L_DEPS})
    tierkv_set_warnings(${L_NAME})
  else()
    add_library(${L_NAME} INTERFACE ${L_HDRS})
    target_include_directories(${L_NAME} INTERFACE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
    target_link_libraries(${L_NAME} INTERFACE ${L_DEPS})
  endif()
endfunction()

function(tierkv_cc_binary)
  cmake_parse_arguments(B "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${B_NAME} ${B_SRCS})
  target_link_libraries(${B_NAME} PRIVATE ${B_DEPS})
  tierkv_set_warnings(${B_NAME})
endfunction()

function(tierkv_cc_test)
  if(NOT TIERKV_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(T "GPU" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${T_NAME} ${T_SRCS})
  target_link_libraries(${T_NAME} PRIVATE ${T_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  tierkv_set_warnings(${T_NAME})
  add_test(NAME ${T_NAME} COMMAND ${T_NAME})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  set_tests_properties(${T_NAME} PROPERTIES TIMEOUT ${T_TIMEOUT}
    ENVIRONMENT "TIERKV_SOURCE_DIR=${PROJECT_SOURCE_DIR};TIERKV_BINARY_DIR=${PROJECT_BINARY_DIR}")
  # A GPU test that skipped itself (GTEST_SKIP: no usable GPU) shows as skipped in ctest,
  # not passed. Only for GPU tests, whose every case skips together.
  if(T_GPU)
    set_tests_properties(${T_NAME} PROPERTIES SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]")
  endif()
  if(T_LABELS)
    set_tests_properties(${T_NAME} PROPERTIES LABELS "${T_LABELS}")
  endif()
endfunction()

# tierkv_proto_library(NAME name ROOT dir PROTOS a.proto ... [SRCS extra.cc ...] [DEPS ...])
# Generates C++ messages and gRPC stubs of PROTOS (paths relative to ROOT) into the build
# directory, so that they are included as "<path relative to ROOT>.pb.h".
function(tierkv_proto_library)
  cmake_parse_arguments(P "" "NAME;ROOT" "PROTOS;SRCS;DEPS" ${ARGN})
  set(_gen)
  foreach(_proto ${P_PROTOS})
    get_filename_component(_dir ${_proto} DIRECTORY)
    get_filename_component(_name ${_proto} NAME_WE)
    set(_base ${PROJECT_BINARY_DIR}/${_dir}/${_name})
    set(_out ${_base}.pb.cc ${_base}.pb.h ${_base}.grpc.pb.cc ${_base}.grpc.pb.h)
    add_custom_command(
      OUTPUT ${_out}
      COMMAND protobuf::protoc
        --proto_path=${P_ROOT}
        --cpp_out=${PROJECT_BINARY_DIR}
        --grpc_out=${PROJECT_BINARY_DIR}
        --plugin=protoc-gen-grpc=$<TARGET_FILE:gRPC::grpc_cpp_plugin>
        ${_proto}
      DEPENDS ${P_ROOT}/${_proto}
      WORKING_DIRECTORY ${P_ROOT}
      COMMENT "protoc ${_proto}")
    list(APPEND _gen ${_out})
  endforeach()
  add_library(${P_NAME} STATIC ${_gen} ${P_SRCS})
  target_include_directories(${P_NAME} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(${P_NAME} PUBLIC protobuf::libprotobuf gRPC::grpc++ ${P_DEPS})
endfunction()
