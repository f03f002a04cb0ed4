# cmake/check_layers.cmake — the layering rule, checked at every build (cmake -P, run by the
# fp4qat_layering target that every library depends on): a folder's sources may include only
# headers of its own folder and of the folders below it (docs/architecture.md). An include that
# climbs fails the build, naming file:line.
#   -DSOURCE_DIR=<repo> -DSTAMP=<file to touch on success>
set(FLOORS kernels autograd io model qat dist rollout trainer cli)
set(ALLOWED_kernels  kernels)
set(ALLOWED_autograd autograd kernels)
set(ALLOWED_io       io kernels)
set(ALLOWED_model    model io autograd kernels)
set(ALLOWED_qat      qat model io autograd kernels)
set(ALLOWED_dist     dist model io autograd kernels)
set(ALLOWED_rollout  rollout qat model io autograd kernels)
set(ALLOWED_trainer  trainer rollout dist qat model io autograd kernels)
set(ALLOWED_cli      cli trainer rollout dist qat model io autograd kernels)

set(errors "")
foreach(floor IN LISTS FLOORS)
  file(GLOB_RECURSE files "${SOURCE_DIR}/${floor}/*.h" "${SOURCE_DIR}/${floor}/*.cpp"
                          "${SOURCE_DIR}/${floor}/*.cu" "${SOURCE_DIR}/${floor}/*.cuh")
  foreach(f IN LISTS files)
    file(STRINGS "${f}" lines REGEX "^[ \t]*#[ \t]*include[ \t]*\"")
    foreach(line IN LISTS lines)
      string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*\"([^\"/]+)/.*" "\\1" target "${line}")
      if(target STREQUAL line)
        continue()  # a header without a folder (same directory) or not ours
      endif()
      list(FIND FLOORS "${target}" is_floor)
      list(FIND ALLOWED_${floor} "${target}" allowed)
      if(is_floor GREATER -1 AND allowed EQUAL -1)
        file(RELATIVE_PATH rel "${SOURCE_DIR}" "${f}")
        string(APPEND errors "  ${rel}: ${line}   (${floor}/ may include only: ${ALLOWED_${floor}})\n")
      endif()
    endforeach()
  endforeach()
endforeach()
if(errors)
  message(FATAL_ERROR "fp4qat layering: includes that climb a floor (docs/architecture.md):\n${errors}")
endif()
if(STAMP)
  file(TOUCH "${STAMP}")
endif()
