# Optional CUDA kernels (cpp/cuda), compiled into fusedopt_engine.
#   FUSEDOPT_CUDA=AUTO (default): build them when CMake finds a CUDA compiler
#   FUSEDOPT_CUDA=ON:             build them; fail without a CUDA compiler
#   FUSEDOPT_CUDA=OFF:            CPU only
# With pip: pip install . -Ccmake.define.FUSEDOPT_CUDA=OFF
#
# The CUDA runtime is linked statically (its symbols kept private): it loads
# the driver library lazily, at the first CUDA call, so importing fusedopt on
# a machine without a GPU or driver works and reports no device.
#
# Expects target fusedopt_engine (and _core when FUSEDOPT_PYTHON); sets FUSEDOPT_WITH_CUDA.

set(FUSEDOPT_CUDA AUTO CACHE STRING "Build the CUDA kernels: AUTO, ON or OFF")
set_property(CACHE FUSEDOPT_CUDA PROPERTY STRINGS AUTO ON OFF)
set(FUSEDOPT_CUDA_ARCHITECTURES "" CACHE STRING
    "CUDA architectures of the kernels (empty: 75, 80 and 90 as SASS plus 90 as PTX; 70 too before CUDA 13)")

string(TOUPPER "${FUSEDOPT_CUDA}" _fusedopt_cuda_mode)
if(_fusedopt_cuda_mode MATCHES "^(1|TRUE|YES|Y)$")
  set(_fusedopt_cuda_mode ON)
elseif(_fusedopt_cuda_mode MATCHES "^(0|FALSE|NO|N)$")
  set(_fusedopt_cuda_mode OFF)
endif()
if(NOT _fusedopt_cuda_mode MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "FUSEDOPT_CUDA must be AUTO, ON or OFF (got '${FUSEDOPT_CUDA}')")
endif()

set(FUSEDOPT_WITH_CUDA OFF)
if(NOT _fusedopt_cuda_mode STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(FUSEDOPT_WITH_CUDA ON)
  elseif(_fusedopt_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "FUSEDOPT_CUDA=ON but CMake found no CUDA compiler: put nvcc on PATH, "
                        "set CUDACXX or CMAKE_CUDA_COMPILER, or build with FUSEDOPT_CUDA=OFF")
  else()
    message(STATUS "fusedopt: no CUDA compiler found; building the CPU engine only")
  endif()
endif()

if(FUSEDOPT_WITH_CUDA)
  if(FUSEDOPT_CUDA_ARCHITECTURES)
    set(_fusedopt_cuda_archs ${FUSEDOPT_CUDA_ARCHITECTURES})
  elseif(CMAKE_CUDA_COMPILER_VERSION VERSION_LESS 13)
    set(_fusedopt_cuda_archs 70-real 75-real 80-real 90)
  else()  # CUDA 13 dropped sm_70 and earlier
    set(_fusedopt_cuda_archs 75-real 80-real 90)
  endif()
  message(STATUS "fusedopt: CUDA ${CMAKE_CUDA_COMPILER_VERSION} kernels for ${_fusedopt_cuda_archs}")

  add_library(fusedopt_cuda_kernels OBJECT
              cpp/cuda/cuda_engine.cu cpp/cuda/elementwise_part0.cu cpp/cuda/elementwise_part1.cu
              cpp/cuda/elementwise_part2.cu cpp/cuda/elementwise_part3.cu cpp/cuda/lamb.cu
              cpp/cuda/adafactor.cu cpp/cuda/dropout.cu cpp/cuda/regularizers.cu)
  set_target_properties(fusedopt_cuda_kernels PROPERTIES
                        CUDA_ARCHITECTURES "${_fusedopt_cuda_archs}"
                        CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON
                        POSITION_INDEPENDENT_CODE ON)
  target_include_directories(fusedopt_cuda_kernels PRIVATE cpp/include cpp/src cpp/cuda)
  # No FMA contraction, as the CPU kernels' -ffp-contract=off; IEEE division
  # and square root (nvcc's defaults, stated).
  target_compile_options(fusedopt_cuda_kernels PRIVATE
                         $<$<COMPILE_LANGUAGE:CUDA>:-O3 --fmad=false -prec-div=true -prec-sqrt=true>)

  target_sources(fusedopt_engine PRIVATE $<TARGET_OBJECTS:fusedopt_cuda_kernels>)
  # (Linking CUDA objects makes the engine a CUDA target for CMake.)
  set_target_properties(fusedopt_engine PROPERTIES CUDA_ARCHITECTURES "${_fusedopt_cuda_archs}")
  target_include_directories(fusedopt_engine PRIVATE cpp/cuda)
  target_compile_definitions(fusedopt_engine PRIVATE FUSEDOPT_WITH_CUDA)
  target_link_libraries(fusedopt_engine PRIVATE CUDA::cudart_static)
  # Keep the static runtime's symbols out of the engine's exports, so they
  # never interpose on another library's CUDA runtime (PyTorch, CuPy, TF).
  target_link_options(fusedopt_engine PRIVATE "LINKER:--exclude-libs,ALL")

  if(TARGET _core)
    # The CUDA adapter's arrays and checks; cuda_bindings.cpp (always built)
    # registers its entry points, or the CPU-only stubs without CUDA.
    target_sources(_core PRIVATE cpp/bindings/cuda_arrays.cpp cpp/bindings/cuda_checks.cpp)
    target_compile_definitions(_core PRIVATE FUSEDOPT_WITH_CUDA)
  endif()
endif()
