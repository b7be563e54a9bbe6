# Decides whether the NCCL backend is built: it needs a CUDA LibTorch, the CUDA toolkit and NCCL.
# The NCCL is the one LibTorch itself loads, so that a process holds one copy: the nvidia-nccl
# wheel beside a torch wheel (site-packages/nvidia/nccl), else NCCL in LibTorch's lib/, else the
# toolkit's (or NCCL_HOME's). Sets TENAX_HAS_NCCL and, when found, NCCL_INCLUDE_DIR/NCCL_LIBRARY.
set(TENAX_HAS_NCCL OFF)
set(TENAX_NCCL_WHY "")
if(NOT TENAX_WITH_NCCL)
  set(TENAX_NCCL_WHY "TENAX_WITH_NCCL is OFF")
elseif(NOT TENAX_TORCH_CUDA)
  set(TENAX_NCCL_WHY "LibTorch ${Torch_VERSION} is a CPU-only build")
else()
  find_package(CUDAToolkit QUIET)
  get_filename_component(_wheel_nccl "${TENAX_TORCH_ROOT}/../nvidia/nccl" ABSOLUTE)
  find_path(NCCL_INCLUDE_DIR nccl.h NO_DEFAULT_PATH
    PATHS "${_wheel_nccl}/include" "${TENAX_TORCH_ROOT}/include" $ENV{NCCL_HOME}/include
          ${CUDAToolkit_INCLUDE_DIRS})
  find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR NO_DEFAULT_PATH
    PATHS "${_wheel_nccl}/lib" "${TENAX_TORCH_ROOT}/lib" $ENV{NCCL_HOME}/lib
          ${CUDAToolkit_LIBRARY_DIR})
  if(NOT CUDAToolkit_FOUND)
    set(TENAX_NCCL_WHY "CUDA toolkit not found")
  elseif(NOT NCCL_INCLUDE_DIR OR NOT NCCL_LIBRARY)
    set(TENAX_NCCL_WHY "NCCL not found beside LibTorch, in NCCL_HOME or in the CUDA toolkit")
  else()
    set(TENAX_HAS_NCCL ON)
  endif()
endif()
if(TENAX_HAS_NCCL)
  message(STATUS "tenax: NCCL backend ON (CUDA ${CUDAToolkit_VERSION}, ${NCCL_LIBRARY})")
else()
  message(STATUS "tenax: NCCL backend OFF (${TENAX_NCCL_WHY}; GPU collectives unavailable)")
endif()
