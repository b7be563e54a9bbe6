# Finds LibTorch >= 2.4 (the device-generic autocast API): by default the one inside the
# project's Python environment (.venv/, the torch wheel that scripts/setup.sh installs, through
# torch.utils.cmake_prefix_path); any other
# LibTorch 2.x (the official archive, a machine's preinstalled PyTorch) through CMAKE_PREFIX_PATH
# or Torch_DIR, which take precedence. Sets TENAX_TORCH_CUDA when LibTorch was built with CUDA.
set(TENAX_PYTHON "${PROJECT_SOURCE_DIR}/.venv/bin/python" CACHE FILEPATH
  "Python whose torch package provides LibTorch when CMAKE_PREFIX_PATH does not")

if(Torch_DIR)
  set(TENAX_TORCH_CONFIG "${Torch_DIR}/TorchConfig.cmake")
else()
  find_file(TENAX_TORCH_CONFIG TorchConfig.cmake PATH_SUFFIXES Torch share/cmake/Torch
    NO_CMAKE_SYSTEM_PATH NO_SYSTEM_ENVIRONMENT_PATH)
  if(NOT TENAX_TORCH_CONFIG AND EXISTS "${TENAX_PYTHON}")
    execute_process(
      COMMAND "${TENAX_PYTHON}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
      OUTPUT_VARIABLE TENAX_TORCH_PREFIX OUTPUT_STRIP_TRAILING_WHITESPACE
      RESULT_VARIABLE TENAX_TORCH_PY_RESULT ERROR_QUIET)
    if(TENAX_TORCH_PY_RESULT EQUAL 0)
      unset(TENAX_TORCH_CONFIG CACHE)
      find_file(TENAX_TORCH_CONFIG TorchConfig.cmake PATHS "${TENAX_TORCH_PREFIX}/Torch"
        NO_DEFAULT_PATH)
    endif()
  endif()
endif()
if(NOT EXISTS "${TENAX_TORCH_CONFIG}")
  message(FATAL_ERROR "tenax: LibTorch >= 2.4 not found. Run scripts/setup.sh (it installs the "
    "torch wheel into .venv/), or pass -DCMAKE_PREFIX_PATH=<a LibTorch 2.x>.")
endif()
get_filename_component(TENAX_TORCH_CMAKE_DIR "${TENAX_TORCH_CONFIG}" DIRECTORY)
get_filename_component(TENAX_TORCH_ROOT "${TENAX_TORCH_CMAKE_DIR}/../../.." ABSOLUTE)

# The version is read before Torch's own config runs: a 1.x config fails in ways that do not
# name the version.
set(PACKAGE_FIND_VERSION 2.4)
include("${TENAX_TORCH_CMAKE_DIR}/TorchConfigVersion.cmake" OPTIONAL)
if(NOT PACKAGE_VERSION OR PACKAGE_VERSION VERSION_LESS 2.4)
  message(FATAL_ERROR "tenax: LibTorch ${PACKAGE_VERSION} at ${TENAX_TORCH_ROOT} is older than "
    "2.4, the oldest tenax supports. Point CMAKE_PREFIX_PATH at a LibTorch 2.4 or newer.")
endif()

# A CUDA LibTorch's config needs the CUDA toolkit (nvcc and its headers) and stops without it.
set(TENAX_TORCH_CUDA OFF)
if(EXISTS "${TENAX_TORCH_ROOT}/lib/libtorch_cuda.so")
  set(TENAX_TORCH_CUDA ON)
  find_package(CUDAToolkit QUIET)
  if(NOT CUDAToolkit_FOUND)
    message(FATAL_ERROR "tenax: LibTorch ${PACKAGE_VERSION} at ${TENAX_TORCH_ROOT} is built with "
      "CUDA, and building against it needs the CUDA toolkit (nvcc), which was not found. Install "
      "it (or set CUDAToolkit_ROOT), or build against a CPU-only LibTorch 2.x.")
  endif()
endif()

set(Torch_DIR "${TENAX_TORCH_CMAKE_DIR}" CACHE PATH "LibTorch's CMake config" FORCE)
find_package(Torch REQUIRED CONFIG)
message(STATUS "tenax: LibTorch ${Torch_VERSION} (${TENAX_TORCH_ROOT}), CUDA ${TENAX_TORCH_CUDA}")

# A torch wheel's libraries find the CUDA runtime, cuBLAS, NCCL, ... in the nvidia-* wheels beside
# it (their RPATH); the linker must look there too, not in a system CUDA of another version.
if(TENAX_TORCH_CUDA)
  file(GLOB TENAX_TORCH_DEP_DIRS LIST_DIRECTORIES true "${TENAX_TORCH_ROOT}/../nvidia/*/lib")
  list(PREPEND TENAX_TORCH_DEP_DIRS "${TENAX_TORCH_ROOT}/lib")
  string(REPLACE ";" ":" _dirs "${TENAX_TORCH_DEP_DIRS}")
  set(TENAX_TORCH_RPATH_LINK "LINKER:-rpath-link,${_dirs}")
  add_link_options("${TENAX_TORCH_RPATH_LINK}")
endif()
