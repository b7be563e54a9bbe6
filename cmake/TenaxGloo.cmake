# Gloo, compiled into tenax under a namespace of its own (tenax_gloo) with hidden symbols, from the
# source scripts/setup.sh unpacks into .deps/gloo. A process that loads LibTorch already holds
# torch's Gloo (inside libtorch_cpu, symbols exported under gloo::); a second Gloo with the same
# names would interpose on it. Renamed, the two cannot meet (docs/ARCHITECTURE.md).
# Defines the static library target tenax_gloo; whoever links it sees gloo:: as tenax_gloo::.
set(TENAX_GLOO_SOURCE_DIR "${PROJECT_SOURCE_DIR}/.deps/gloo" CACHE PATH "Gloo's source tree")
if(NOT EXISTS "${TENAX_GLOO_SOURCE_DIR}/gloo/context.cc")
  message(FATAL_ERROR "tenax: Gloo's source is not in ${TENAX_GLOO_SOURCE_DIR}: run scripts/setup.sh")
endif()
set(_g "${TENAX_GLOO_SOURCE_DIR}/gloo")
set(GLOO_VERSION_MAJOR 0)
set(GLOO_VERSION_MINOR 5)
set(GLOO_VERSION_PATCH 0)
foreach(flag USE_CUDA USE_NCCL USE_ROCM USE_RCCL USE_REDIS USE_IBVERBS USE_MPI USE_AVX USE_LIBUV
             HAVE_TRANSPORT_TCP_TLS HAVE_TRANSPORT_IBVERBS HAVE_TRANSPORT_UV)
  set(GLOO_${flag} 0)
endforeach()
set(GLOO_HAVE_TRANSPORT_TCP 1)
set(TENAX_GLOO_INCLUDE_DIR "${CMAKE_BINARY_DIR}/gloo-include")
configure_file("${_g}/config.h.in" "${TENAX_GLOO_INCLUDE_DIR}/gloo/config.h")

add_library(tenax_gloo STATIC
  ${_g}/algorithm.cc ${_g}/allgather.cc ${_g}/allgatherv.cc ${_g}/allreduce.cc
  ${_g}/allreduce_local.cc ${_g}/alltoall.cc ${_g}/alltoallv.cc ${_g}/barrier.cc
  ${_g}/broadcast.cc ${_g}/context.cc ${_g}/gather.cc ${_g}/gatherv.cc ${_g}/reduce.cc
  ${_g}/scatter.cc ${_g}/types.cc
  ${_g}/common/linux.cc ${_g}/common/logging.cc
  ${_g}/rendezvous/context.cc ${_g}/rendezvous/file_store.cc ${_g}/rendezvous/hash_store.cc
  ${_g}/rendezvous/prefix_store.cc ${_g}/rendezvous/store.cc
  ${_g}/transport/address.cc ${_g}/transport/buffer.cc ${_g}/transport/context.cc
  ${_g}/transport/device.cc ${_g}/transport/pair.cc ${_g}/transport/unbound_buffer.cc
  ${_g}/transport/tcp/address.cc ${_g}/transport/tcp/buffer.cc ${_g}/transport/tcp/context.cc
  ${_g}/transport/tcp/device.cc ${_g}/transport/tcp/error.cc ${_g}/transport/tcp/loop.cc
  ${_g}/transport/tcp/pair.cc ${_g}/transport/tcp/socket.cc ${_g}/transport/tcp/unbound_buffer.cc)
target_include_directories(tenax_gloo SYSTEM PUBLIC ${TENAX_GLOO_INCLUDE_DIR} ${TENAX_GLOO_SOURCE_DIR})
target_compile_definitions(tenax_gloo PUBLIC gloo=tenax_gloo)
target_compile_options(tenax_gloo PRIVATE -w ${TENAX_TORCH_ABI})
target_link_libraries(tenax_gloo PUBLIC Threads::Threads)
set_target_properties(tenax_gloo PROPERTIES POSITION_INDEPENDENT_CODE ON
  CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
# Writes to a peer that is gone: EPIPE, never SIGPIPE (the signal is the program's).
set_source_files_properties(${_g}/transport/tcp/pair.cc PROPERTIES COMPILE_OPTIONS
  "-include;${CMAKE_CURRENT_LIST_DIR}/gloo/send_nosignal.h")
