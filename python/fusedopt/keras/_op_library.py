"""Build, cache and load the TensorFlow op library (cpp/tf) at first use.

A TensorFlow C++ binary is tied to one TF release, so the thin TF glue is
compiled against the TensorFlow installed at run time; the math is already
compiled in the package (libfusedopt_engine). Builds are cached under
``$FUSEDOPT_CACHE_DIR`` (default ``~/.cache/fusedopt``) keyed by package
version, sources, TF version, flags and compiler; a lock file makes
concurrent processes build once; a manifest with the library's SHA-256 lets a
corrupt or half-written entry be detected and rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_SOURCES = ("fused_update_ops.cc", "fused_update_kernels.cc", "regularizer_dropout_ops.cc",
            "regularizer_dropout_kernels.cc")
# The fused update ops' GPU kernels: built where TensorFlow has CUDA and the
# engine its CUDA kernels; where they fail to compile, the library is built
# without them (CPU kernels only) and status() says why.
_GPU_SOURCES = ("fused_update_kernels_gpu.cc",)
_HEADERS = ("fused_update_ops.h", "fused_update_kernel.h", "engine_status.h")
_LIB_NAME = "fusedopt_tf_ops.so"

_lock = threading.Lock()
_state: dict[str, Any] = {"module": None, "error": None, "path": None, "tried": False}


class OpLibraryError(RuntimeError):
    """The TensorFlow op library could not be built or loaded."""


def _source_dir() -> Path:
    return _PACKAGE_DIR / "tf_src"


def _cache_root() -> Path:
    root = os.environ.get("FUSEDOPT_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fusedopt"


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CXX", "c++"))


def _compiler_version(cxx: list[str]) -> str:
    try:
        out = subprocess.run(cxx + ["--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0] if out.stdout else ""
    except (OSError, subprocess.SubprocessError) as err:
        raise OpLibraryError(f"no C++ compiler found ({' '.join(cxx)}): {err}") from err


def gpu_kernels_wanted() -> bool:
    """Whether the op library gets GPU kernels: TensorFlow is built with CUDA
    and fusedopt's engine with its CUDA kernels."""
    import tensorflow as tf

    from fusedopt import _cuda

    return bool(tf.test.is_built_with_cuda() and _cuda.compiled())


def _sources(gpu: bool) -> tuple[str, ...]:
    return _SOURCES + (_GPU_SOURCES if gpu else ())


def compile_command(source: str, output: Path) -> list[str]:
    """The compiler command that compiles one of the op library's sources."""
    import tensorflow as tf

    src = _source_dir()
    return (_compiler() + ["-O2", "-fPIC", "-w", "-DEIGEN_USE_THREADS"]
            + list(tf.sysconfig.get_compile_flags())
            + ["-I" + str(_PACKAGE_DIR / "include"), "-I" + str(src)]
            + ["-c", str(src / source), "-o", str(output)])


def link_command(objects: list[Path], output: Path) -> list[str]:
    """The command that links the compiled sources into the op library."""
    import tensorflow as tf

    return (_compiler() + ["-shared"] + [str(o) for o in objects] + ["-o", str(output)]
            + list(tf.sysconfig.get_link_flags())
            + ["-L" + str(_PACKAGE_DIR), "-l:libfusedopt_engine.so", "-Wl,-rpath," + str(_PACKAGE_DIR)])


def _compile_all(sources: tuple[str, ...], build_dir: Path) -> dict[str, tuple[Path, str | None]]:
    """Compile `sources` in parallel (one process per CPU): source -> (object, error or None)."""
    results: dict[str, tuple[Path, str | None]] = {}
    pending = list(sources)
    running: list[tuple[str, Path, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < max(1, os.cpu_count() or 1):
            source = pending.pop(0)
            obj = build_dir / (source + ".o")
            proc = subprocess.Popen(compile_command(source, obj), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            running.append((source, obj, proc))
        source, obj, proc = running.pop(0)
        _, err = proc.communicate()
        results[source] = (obj, None if proc.returncode == 0 else f"compiling {source} failed:\n{err[-3000:]}")
    return results


def cache_key() -> str:
    """Hash of everything the binary depends on."""
    import tensorflow as tf

    from fusedopt import __version__

    h = hashlib.sha256()
    gpu = gpu_kernels_wanted()
    commands = [compile_command(source, Path("OBJ")) for source in _sources(gpu)]
    commands.append(link_command([Path("OBJ")], Path("OUT")))
    for part in (__version__, tf.__version__, sys.platform, _compiler_version(_compiler()),
                 *(" ".join(c) for c in commands)):
        h.update(part.encode())
        h.update(b"\0")
    for name in _SOURCES + _GPU_SOURCES + _HEADERS:
        h.update((_source_dir() / name).read_bytes())
    for header in sorted((_PACKAGE_DIR / "include" / "fusedopt").rglob("*.h")):  # c_api.h, the math
        h.update(header.read_bytes())
    return h.hexdigest()[:24]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry_is_valid(entry: Path) -> bool:
    lib, manifest = entry / _LIB_NAME, entry / "manifest.json"
    try:
        return lib.is_file() and json.loads(manifest.read_text())["sha256"] == _sha256(lib)
    except (OSError, ValueError, KeyError):
        return False


def build(force: bool = False) -> Path:
    """Build the op library into the cache (if needed) and return its path."""
    entry = _cache_root() / cache_key()
    entry.mkdir(parents=True, exist_ok=True)
    with open(entry / "build.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # one builder; the others wait, then reuse
        if not force and _entry_is_valid(entry):
            return entry / _LIB_NAME
        fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=entry)
        os.close(fd)
        try:
            with tempfile.TemporaryDirectory(prefix=".objects-", dir=entry) as build_dir:
                manifest: dict[str, Any] = {"gpu_kernels": gpu_kernels_wanted()}
                compiled = _compile_all(_sources(manifest["gpu_kernels"]), Path(build_dir))
                for source in _GPU_SOURCES:
                    # The CPU kernels must not depend on the GPU glue compiling.
                    if source in compiled and compiled[source][1] is not None:
                        manifest = {"gpu_kernels": False, "gpu_error": compiled.pop(source)[1]}
                errors = [err for _, err in compiled.values() if err is not None]
                if errors:
                    raise OpLibraryError("compiling the TensorFlow op library failed:\n" + "\n".join(errors))
                cmd = link_command([obj for obj, _ in compiled.values()], Path(tmp))
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise OpLibraryError("linking the TensorFlow op library failed:\n"
                                         + " ".join(cmd) + "\n" + proc.stderr[-4000:])
            manifest.update(sha256=_sha256(Path(tmp)), command=cmd)
            os.replace(tmp, entry / _LIB_NAME)
            (entry / "manifest.json.tmp").write_text(json.dumps(manifest))
            os.replace(entry / "manifest.json.tmp", entry / "manifest.json")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return entry / _LIB_NAME


def load() -> Any:
    """The loaded op module, building it at first use; raises OpLibraryError."""
    with _lock:
        if _state["module"] is not None:
            return _state["module"]
        if _state["tried"]:
            raise OpLibraryError(_state["error"])
        _state["tried"] = True
        try:
            if os.environ.get("FUSEDOPT_DISABLE_TF_OPS"):
                raise OpLibraryError("disabled by the FUSEDOPT_DISABLE_TF_OPS environment variable")
            import tensorflow as tf

            path = build()
            try:
                module = tf.load_op_library(str(path))
            except Exception:  # a stale or corrupt entry: rebuild once
                path = build(force=True)
                module = tf.load_op_library(str(path))
        except Exception as err:  # noqa: BLE001 - any failure means "fall back"
            _state["error"] = f"{type(err).__name__}: {err}"
            raise OpLibraryError(_state["error"]) from err
        _register_gradients(module)
        try:
            manifest = json.loads((path.parent / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = {}
        _state["module"], _state["path"] = module, path
        _state["gpu_kernels"] = bool(manifest.get("gpu_kernels"))
        _state["gpu_error"] = manifest.get("gpu_error")
        return module


def _register_gradients(module: Any) -> None:
    """The gradients of the regularizer and dropout ops, each another fused op."""
    import tensorflow as tf

    @tf.RegisterGradient("FusedoptElasticPenalty")
    def _elastic(op, dz):
        x, l1, l2 = op.inputs
        return [dz * module.fusedopt_elastic_gradient(x=x, l1=l1, l2=l2), None, None]

    @tf.RegisterGradient("FusedoptSpPenalty")
    def _sp(op, dz):
        x, reference, alpha = op.inputs
        dx = dz * module.fusedopt_sp_gradient(x=x, reference=reference, alpha=alpha)
        return [dx, -dx, None]

    @tf.RegisterGradient("FusedoptDropout")
    def _dropout(op, dy, _dmask):
        _, rate, _, noise_shape = op.inputs
        dx = module.fusedopt_dropout_grad(dy=dy, mask=op.outputs[1], rate=rate, noise_shape=noise_shape)
        return [dx, None, None, None]

    for name in ("FusedoptElasticGradient", "FusedoptSpGradient", "FusedoptDropoutGrad"):
        tf.no_gradient(name)  # used only as gradients; second derivatives are not provided


# The dtypes of the fused ops' CPU kernels.
FUSED_DTYPES = ("float32", "float64")


def tf_value(x: Any) -> Any:
    """The TensorFlow variable or tensor behind `x` (a keras.Variable's `.value`)."""
    import keras

    return x.value if isinstance(x, keras.Variable) else x


def device_type(x: Any) -> str:
    """"CPU", "GPU", ... for the device of `x` (a keras.Variable, tf.Variable or
    tensor); "CPU" where it names none."""
    import tensorflow as tf

    name = getattr(tf_value(x), "device", "") or ""
    return (tf.DeviceSpec.from_string(name).device_type or "CPU").upper()


def takes(x: Any, gpu: bool = False) -> bool:
    """Whether the fused ops' kernels take `x`: float32/float64 on the CPU; with
    `gpu` (the update ops, which have GPU kernels), also on a GPU where the
    library was built with them and fusedopt's CUDA engine sees a device."""
    import keras

    if keras.backend.standardize_dtype(x.dtype) not in FUSED_DTYPES:
        return False
    device = device_type(x)
    if device == "CPU":
        return True
    return device == "GPU" and gpu and usable() and gpu_kernels_usable()


def gpu_kernels_usable() -> bool:
    """The loaded library has GPU kernels and fusedopt's CUDA engine can run
    (its CUDA runtime found a driver and a device): else GPU variables take
    Keras's update rather than failing in the op."""
    if "gpu_usable" not in _state:
        from fusedopt import _cuda

        _state["gpu_usable"] = bool(_state.get("gpu_kernels")) and _cuda.device_count() > 0
    return _state["gpu_usable"]


def module_for(x: Any) -> Any:
    """The op module when the fused ops can run on `x` here (`takes` and `usable`), else None."""
    return load() if takes(x) and usable() else None


def usable() -> bool:
    """The fused ops can run here: the TensorFlow backend, outside an XLA
    context (a custom op has no XLA kernel), and the library loads (else one
    warning, see `available`)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        return False
    return available()


def available() -> bool:
    """Whether the fused ops can be used; warns once (and only once) if not."""
    try:
        load()
        return True
    except OpLibraryError as err:
        if not _state.get("warned"):
            _state["warned"] = True
            warnings.warn(
                "fusedopt: the TensorFlow op library is unavailable, so fusedopt.keras "
                f"optimizers use Keras's own update (same numbers, not fused). Reason: {err}",
                RuntimeWarning,
                stacklevel=3,
            )
        return False


def status() -> dict[str, Any]:
    """Whether the op library is built/loaded, where, and why not."""
    return {"loaded": _state["module"] is not None, "path": str(_state["path"]) if _state["path"] else None,
            "error": _state["error"], "cache_dir": str(_cache_root()),
            "gpu_kernels": bool(_state.get("gpu_kernels")), "gpu_error": _state.get("gpu_error")}
