#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run of the NumPy door.
#
# Builds fusedopt with -DFUSEDOPT_SANITIZE=ON (engine, every per-ISA kernel
# object and _core instrumented; CMakeLists.txt) into its own virtual
# environment and build directory, leaving the normal install alone, then runs
# under the sanitizers, with the ASan runtime preloaded into the interpreter:
#   - every tests/test_*.py that imports no framework (TensorFlow, Keras,
#     torch, JAX), found anew on each run;
#   - every tests/fuzz/fuzz_*.py that imports no framework (with pytest when
#     it defines tests, else as a script);
#   - a short soak (tests/soak.py) without its memory bound, which ASan's
#     quarantine and shadow memory make meaningless.
# Any sanitizer report fails the run (non-zero exit); the last line sums up.
#
# Usage: bash tests/sanitize.sh [pytest arguments, replacing the test files]
# Environment:
#   FUSEDOPT_SANITIZE_DIR  where the venv and build go (default: build/sanitize)
#   PYTHON                 the interpreter to make the venv from (default: python3)
#   SANITIZE_SOAK_STEPS    steps of the soak (default 10000; 0 skips it)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${FUSEDOPT_SANITIZE_DIR:-$root/build/sanitize}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
venv="$dir/venv"
reports="$dir/reports"
python="${PYTHON:-python3}"
soak_steps="${SANITIZE_SOAK_STEPS:-10000}"

# -- build ------------------------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv --system-site-packages "$venv"
fi
echo "sanitize: building the ASan + UBSan variant into $venv"
t_build=$SECONDS
# RelWithDebInfo: the targets keep their -O3 / -O2 (CMakeLists.txt), and
# pybind11 does not strip _core, so reports carry file:line. CUDA off: the
# device code is not instrumented, and nvcc would double the build time.
"$venv/bin/python" -m pip install --quiet --no-build-isolation --no-deps --force-reinstall \
  -C cmake.define.FUSEDOPT_SANITIZE=ON -C cmake.define.FUSEDOPT_CUDA=OFF \
  -C cmake.build-type=RelWithDebInfo -C "build-dir=$dir/cmake" "$root"
t_build=$((SECONDS - t_build))

# (Found without importing it: that needs the ASan runtime preloaded.)
pkg="$("$venv/bin/python" -c \
       'import importlib.util as u; print(u.find_spec("fusedopt").submodule_search_locations[0])')"
engine="$(ls "$pkg"/libfusedopt_engine*.so* 2>/dev/null | head -n1 || true)"
if [ -z "$engine" ]; then
  echo "sanitize: no libfusedopt_engine in the sanitized venv ($pkg)" >&2
  exit 1
fi
# Preload the very runtimes the engine links: the interpreter is not
# instrumented, so ASan's runtime must come first in the process.
asan_rt="$(ldd "$engine" | awk '/libasan/ {print $3}')"
ubsan_rt="$(ldd "$engine" | awk '/libubsan/ {print $3}')"
if [ -z "$asan_rt" ] || [ -z "$ubsan_rt" ]; then
  echo "sanitize: $engine does not link libasan and libubsan: not a sanitized build" >&2
  exit 1
fi

# -- what runs ----------------------------------------------------------------
# A test file belongs to the framework tests when it imports a framework at
# its top level; a lazy import slipping through fails the run (sanitize_plugin).
framework_re='^(import|from)[[:space:]]+(tensorflow|keras|torch|jax)\b|^(from|import)[[:space:]]+fusedopt\.(keras|torch|training|bench)\b|^from[[:space:]]+keras_helpers\b|importorskip\("(tensorflow|keras|torch|jax)'
needs_framework() { grep -qE "$framework_re" "$1"; }

tests=()
fuzz_scripts=()
deselect=()
if [ "$#" -gt 0 ]; then
  tests=("$@")
else
  for f in "$root"/tests/test_*.py; do
    case "$(basename "$f")" in
      # Runs tests/fuzz/fuzz_*.py, which this script runs itself (below).
      test_fuzz.py) continue ;;
      # Its RSS bound cannot hold under ASan; the soak runs below without it.
      test_soak.py) continue ;;
      # Runs examples/, which use Keras.
      test_training_examples.py) continue ;;
      # Configures and compiles examples/cpp and the engine with cmake and
      # the system compiler: the packaging, none of the sanitized code.
      test_cpp_package.py) continue ;;
    esac
    needs_framework "$f" || tests+=("$f")
  done
  for f in "$root"/tests/fuzz/fuzz_*.py; do
    [ -e "$f" ] || continue
    needs_framework "$f" && continue
    if grep -qE '^[[:space:]]*(async[[:space:]]+)?def test_|^class Test' "$f"; then
      tests+=("$f")
    else
      fuzz_scripts+=("$f")
    fi
  done
  deselect=(
    # nvcc's front end on cpp/cuda: none of the sanitized code, and minutes.
    --deselect tests/test_cuda.py::test_cuda_sources_compile
    # They cap the address space (RLIMIT_AS) to make allocations fail; ASan
    # maps terabytes of shadow memory and its allocator aborts on failure
    # rather than throwing std::bad_alloc, so they cannot hold under it.
    --deselect tests/test_reliability.py::test_thread_start_failure_is_a_runtime_error
    --deselect tests/test_reliability.py::test_exception_inside_a_pool_task_reaches_the_caller
    # TensorFlow in a child process: framework tests.
    --deselect tests/test_reliability.py::test_tf_ops_refuse_non_scalar_inputs_instead_of_aborting
    --deselect tests/test_reliability.py::test_keras_optimizer_applies_to_raw_tf_variables
  )
fi

# -- run ------------------------------------------------------------------------
rm -rf "$reports"
mkdir -p "$reports"
log="$reports/output.log"  # everything the runs print (UBSan reports go there)
: > "$log"
export FUSEDOPT_SANITIZE_PREFIX="$venv"
export LD_PRELOAD="$asan_rt $ubsan_rt${LD_PRELOAD:+ $LD_PRELOAD}"
# CPython leaks at exit by design. Abort on the first report, so that no
# handler can swallow it. ASan writes its reports to files in $reports (one
# in a child process counts too); UBSan, next to ASan, ignores log_path and
# writes to stderr, which is kept in $log (and pytest leaves fd 2 alone).
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:log_path=$reports/asan:log_exe_name=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:report_error_type=1"
export FUSEDOPT_CUDA=OFF  # what test_cuda.py expects of this build
export PYTHONPATH="$root/tests${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONFAULTHANDLER=1

# Runs "$@" with its output also appended to $log; returns its status.
logged() {
  set +e
  "$@" 2>&1 | tee -a "$log"
  local rc="${PIPESTATUS[0]}"
  set -e
  return "$rc"
}

cd "$root"

# The canary: an engine call told to read past its buffers must end in an
# ASan report from the engine, else this run could not see a bug at all.
canary="$dir/canary"
rm -rf "$canary"
mkdir -p "$canary"
if (ASAN_OPTIONS="${ASAN_OPTIONS//$reports/$canary}" "$venv/bin/python" - <<'EOF'
import ctypes
import pathlib

import numpy as np

import fusedopt

engine = next(pathlib.Path(fusedopt.__file__).parent.glob("libfusedopt_engine*.so*"))
lib = ctypes.CDLL(str(engine))
lib.fusedopt_l1l2_gradient.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                       ctypes.c_int64, ctypes.c_double, ctypes.c_double]
w, out = np.ones(4096, np.float32), np.zeros(4096, np.float32)
lib.fusedopt_l1l2_gradient(0, w.ctypes.data, out.ctypes.data, 4096 + 64, 0.1, 0.1)
EOF
    exit $?) >/dev/null 2>&1; then
  echo "sanitize: the canary's out-of-bounds read went unreported: ASan is not active" >&2
  exit 1
fi
if ! cat "$canary"/* 2>/dev/null | grep -q "heap-buffer-overflow" ||
   ! cat "$canary"/* | grep -q " in fusedopt_l1l2_gradient "; then
  echo "sanitize: the canary failed without the expected ASan report:" >&2
  cat "$canary"/* >&2 2>/dev/null || true
  exit 1
fi
echo "sanitize: the canary (a read past its buffer through the C API) was reported: ASan is live"

status=0
passed=0
junit="$dir/junit.xml"
rm -f "$junit"
echo "sanitize: pytest under ASan + UBSan: ${tests[*]#"$root/"}"
t_tests=$SECONDS
logged "$venv/bin/python" -m pytest -q -p sanitize_plugin -p no:cacheprovider -r fE \
  --capture=sys --junitxml="$junit" "${deselect[@]}" "${tests[@]}" || status=$?
if [ -f "$junit" ]; then
  passed="$("$venv/bin/python" - "$junit" <<'EOF'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
print(sum(int(s.get("tests", 0)) - sum(int(s.get(k, 0)) for k in ("failures", "errors", "skipped"))
          for s in suites))
EOF
)"
fi
t_tests=$((SECONDS - t_tests))
if [ "$passed" -eq 0 ]; then
  echo "sanitize: no test passed" >&2
  status=1
fi

t_soak=$SECONDS
for f in "${fuzz_scripts[@]}"; do
  echo "sanitize: $f"
  if logged "$venv/bin/python" "$f"; then
    passed=$((passed + 1))
  else
    status=1
  fi
done

if [ "$soak_steps" -gt 0 ] && [ "$#" -eq 0 ]; then
  echo "sanitize: soak, $soak_steps steps"
  if logged "$venv/bin/python" "$root/tests/soak.py" --steps "$soak_steps" --no-rss-check; then
    passed=$((passed + 1))
  else
    status=1
  fi
fi
t_soak=$((SECONDS - t_soak))

# -- verdict --------------------------------------------------------------------
num_reports=0
for r in "$reports"/asan.*; do
  [ -e "$r" ] || continue
  num_reports=$((num_reports + 1))
  echo "==== ASan report $r" >&2
  cat "$r" >&2
done
ubsan_reports="$(grep -c ': runtime error: ' "$log" || true)"
if [ "$ubsan_reports" -gt 0 ]; then
  echo "==== UBSan reports (in $log):" >&2
  grep -A 12 ': runtime error: ' "$log" >&2 || true
fi
num_reports=$((num_reports + ubsan_reports))
[ "$num_reports" -eq 0 ] || status=1
echo "sanitize: build ${t_build} s, pytest ${t_tests} s, fuzz scripts and soak ${t_soak} s"
echo "sanitizers: $passed tests passed under ASan+UBSan, $num_reports reports" \
     "($([ "$status" -eq 0 ] && echo OK || echo FAILED))"
exit "$status"
