# The C++ package: libfusedopt_engine, its public headers and a CMake package
# config, so that C++ users write
#   find_package(fusedopt CONFIG REQUIRED)
#   target_link_libraries(app PRIVATE fusedopt::engine)
# (and a project that adds this tree with add_subdirectory links the same name).
#
# Two install layouts, both relative to the install prefix so that the config
# works wherever the files land:
#   FUSEDOPT_PYTHON=ON (the wheel): everything inside the Python package
#     fusedopt/libfusedopt_engine.so    next to _core (its RPATH is $ORIGIN)
#     fusedopt/include/fusedopt/...     (the TF op library compiles against these)
#     fusedopt/share/cmake/fusedopt/    (fusedopt.get_cmake_dir())
#   FUSEDOPT_PYTHON=OFF: the usual lib/, include/, lib/cmake/fusedopt/.
#
# Expects target fusedopt_engine (and _core when FUSEDOPT_PYTHON).

include(CMakePackageConfigHelpers)

if(FUSEDOPT_PYTHON)
  set(FUSEDOPT_INSTALL_LIBDIR fusedopt)
  set(FUSEDOPT_INSTALL_INCLUDEDIR fusedopt/include)
  set(FUSEDOPT_INSTALL_CMAKEDIR fusedopt/share/cmake/fusedopt)
else()
  include(GNUInstallDirs)
  set(FUSEDOPT_INSTALL_LIBDIR ${CMAKE_INSTALL_LIBDIR})
  set(FUSEDOPT_INSTALL_INCLUDEDIR ${CMAKE_INSTALL_INCLUDEDIR})
  set(FUSEDOPT_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/fusedopt)
endif()

add_library(fusedopt::engine ALIAS fusedopt_engine)
set_target_properties(fusedopt_engine PROPERTIES EXPORT_NAME engine)
# A relative INSTALL_INTERFACE path is taken from the installed prefix.
target_include_directories(fusedopt_engine PUBLIC $<INSTALL_INTERFACE:${FUSEDOPT_INSTALL_INCLUDEDIR}>)

install(TARGETS fusedopt_engine EXPORT fusedoptTargets
        LIBRARY DESTINATION ${FUSEDOPT_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${FUSEDOPT_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${FUSEDOPT_INSTALL_LIBDIR})
# The C API (c_api.h, c_api_cuda.h) and the header-only math.
install(DIRECTORY cpp/include/fusedopt DESTINATION ${FUSEDOPT_INSTALL_INCLUDEDIR})

install(EXPORT fusedoptTargets NAMESPACE fusedopt:: DESTINATION ${FUSEDOPT_INSTALL_CMAKEDIR})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/fusedoptConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/fusedoptConfig.cmake
                              INSTALL_DESTINATION ${FUSEDOPT_INSTALL_CMAKEDIR})
# 0.x: a new minor version may change the C API.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/fusedoptConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/fusedoptConfig.cmake
              ${PROJECT_BINARY_DIR}/fusedoptConfigVersion.cmake
        DESTINATION ${FUSEDOPT_INSTALL_CMAKEDIR})

if(FUSEDOPT_PYTHON)
  install(TARGETS _core LIBRARY DESTINATION fusedopt)
  # TensorFlow op sources, compiled at first use against the installed TF.
  install(DIRECTORY cpp/tf/ DESTINATION fusedopt/tf_src)
  # The XLA FFI handler, compiled at first use against the FFI headers of the
  # JAX that loads it.
  install(DIRECTORY cpp/xla/ DESTINATION fusedopt/xla_src)
endif()
