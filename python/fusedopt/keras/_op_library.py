"""Build, cache, verify and load the TensorFlow op library (cpp/tf) at first use.

A TensorFlow C++ binary is tied to one TF release, so the thin TF glue is
compiled against the TensorFlow installed at run time; the math is already
compiled in the package (libfusedopt_engine). ``fusedopt build-ops`` or
``fusedopt.keras.prebuild()`` build it ahead of time; otherwise the first
fused step does. The cache and its trust checks (private directories, a
lock, a manifest with the library's SHA-256 checked right before
``tf.load_op_library``) are `fusedopt._build_cache`'s.
"""

from __future__ import annotations

import hashlib  # noqa: F401 - tests reach it as _op_library.hashlib
import os
import subprocess  # noqa: F401
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

from fusedopt import _build_cache as _cache
from fusedopt._build_cache import NOT_BUILT, OpLibraryError

__all__ = ["OpLibraryError", "NOT_BUILT", "build", "cache_key", "load", "status", "usable", "available"]

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_SOURCES = ("fused_update_ops.cc", "fused_update_kernels.cc", "regularizer_dropout_ops.cc",
            "regularizer_dropout_kernels.cc")
# The fused update ops' GPU kernels: built where TensorFlow has CUDA and the
# engine its CUDA kernels; where they fail to compile, the library is built
# without them (CPU kernels only) and status() says why.
_GPU_SOURCES = ("fused_update_kernels_gpu.cc",)
# The fused update ops' XLA kernels (jit_compile=True), over the XLA FFI handler
# of xla_src: TensorFlow-internal APIs, so where they fail to compile the
# library is built without them and status() says why.
_XLA_SOURCES = ("fused_update_xla.cc",)
_OPTIONAL = {"gpu": _GPU_SOURCES, "xla": _XLA_SOURCES}
_HEADERS = ("fused_update_ops.h", "fused_update_attrs.h", "fused_update_kernel.h", "engine_status.h",
            "input_shapes.h")
_LIB_NAME = "fusedopt_tf_ops.so"

_lock = threading.Lock()
_state: dict[str, Any] = {"module": None, "error": None, "path": None, "tried": False}

_compiler = _cache.compiler
_compiler_version = _cache.compiler_version


def _source_dir() -> Path:
    return _PACKAGE_DIR / "tf_src"


def gpu_kernels_wanted() -> bool:
    """Whether the op library gets GPU kernels: TensorFlow is built with CUDA
    and fusedopt's engine with its CUDA kernels."""
    import tensorflow as tf

    from fusedopt import _cuda

    return bool(tf.test.is_built_with_cuda() and _cuda.compiled())


# Set, the library is built without its XLA kernels (a minute less to build on
# 2 cores; jit_compile=True then takes Keras's update).
DISABLE_XLA_KERNELS_ENV = "FUSEDOPT_DISABLE_TF_XLA_KERNELS"


def _xla_kernels_wanted() -> bool:
    return not os.environ.get(DISABLE_XLA_KERNELS_ENV)


def _sources(gpu: bool) -> tuple[str, ...]:
    return _SOURCES + (_GPU_SOURCES if gpu else ()) + (_XLA_SOURCES if _xla_kernels_wanted() else ())


def _tf_include() -> Path:
    import tensorflow as tf

    return Path(tf.sysconfig.get_include())


def compile_command(source: str, output: Path) -> list[str]:
    """The compiler command that compiles one of the op library's sources."""
    import tensorflow as tf

    src = _source_dir()
    extra: list[str] = []
    if source in _XLA_SOURCES:  # tf2xla's headers need these two of TF's bundled libraries
        extra = ["-I" + str(_tf_include() / "external" / "highwayhash"),
                 "-I" + str(_tf_include() / "external" / "farmhash_archive" / "src"),
                 "-I" + str(_PACKAGE_DIR / "xla_src")]
    return (_compiler() + ["-O2", "-fPIC", "-w", "-DEIGEN_USE_THREADS"]
            + list(tf.sysconfig.get_compile_flags()) + extra
            + ["-I" + str(_PACKAGE_DIR / "include"), "-I" + str(src)]
            + ["-c", str(src / source), "-o", str(output)])


def link_command(objects: list[Path], output: Path) -> list[str]:
    """The command that links the compiled sources into the op library."""
    import tensorflow as tf

    # The XLA kernels use tf2xla and the XLA builder, in TensorFlow's C++ library.
    xla = ["-l:libtensorflow_cc.so.2"] if any(Path(o).name.startswith(_XLA_SOURCES) for o in objects) else []
    return (_compiler() + ["-shared"] + [str(o) for o in objects] + ["-o", str(output)]
            + list(tf.sysconfig.get_link_flags()) + xla
            + ["-L" + str(_PACKAGE_DIR), "-l:libfusedopt_engine.so", "-Wl,-rpath," + str(_PACKAGE_DIR)])


def _compile_and_link(build_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Compile and link the op library in `build_dir`: its path, and what the manifest
    records of how it was built."""
    manifest: dict[str, Any] = {"gpu_kernels": gpu_kernels_wanted(), "xla_kernels": _xla_kernels_wanted()}
    if not manifest["xla_kernels"]:
        manifest["xla_error"] = f"disabled by the {DISABLE_XLA_KERNELS_ENV} environment variable"
    compiled = _cache.compile_all({s: (compile_command(s, build_dir / (s + ".o")), build_dir / (s + ".o"))
                                   for s in _sources(manifest["gpu_kernels"])})
    for part, sources in _OPTIONAL.items():
        # The CPU kernels must not depend on the GPU or XLA glue compiling.
        for source in sources:
            if source in compiled and compiled[source][1] is not None:
                manifest.update({f"{part}_kernels": False, f"{part}_error": compiled.pop(source)[1]})
    errors = [err for _, err in compiled.values() if err is not None]
    if errors:
        raise OpLibraryError("compiling the TensorFlow op library failed:\n" + "\n".join(errors))
    library = build_dir / _LIB_NAME
    cmd = link_command([obj for obj, _ in compiled.values()], library)
    _cache.link(cmd, "the TensorFlow op library")
    manifest["command"] = cmd
    return library, manifest


def _inputs() -> Iterator[bytes]:
    """Everything the binary depends on but the compiler's version."""
    import tensorflow as tf

    from fusedopt import __version__

    commands = [compile_command(source, Path("OBJ")) for source in _sources(gpu_kernels_wanted())]
    commands.append(link_command([Path("OBJ")], Path("OUT")))
    for part in (__version__, tf.__version__, sys.platform, *(" ".join(c) for c in commands)):
        yield part.encode()
    for name in _SOURCES + _GPU_SOURCES + _XLA_SOURCES + _HEADERS:
        yield (_source_dir() / name).read_bytes()
    yield (_PACKAGE_DIR / "xla_src" / "fused_update_ffi.h").read_bytes()
    for header in sorted((_PACKAGE_DIR / "include" / "fusedopt").rglob("*.h")):  # c_api.h, the math
        yield header.read_bytes()


# Through this module's names, so that a test can replace the toolchain.
_LIBRARY = _cache.Library(_LIB_NAME, inputs=lambda: _inputs(),
                          compile_and_link=lambda build_dir: _compile_and_link(build_dir),
                          compiler_version=lambda: _compiler_version(_compiler()))


def _identity() -> dict[str, str]:
    return _cache.identity(_LIBRARY)


def cache_key() -> str:
    """Hash of everything the binary depends on (runs the compiler for its version)."""
    return _identity()["cache_key"]


def build(force: bool = False) -> Path:
    """Build the op library into the checked cache (unless a verified entry is there, or
    `force`) and return its path; raises OpLibraryError where the cache is not trusted."""
    return _cache.build(_LIBRARY, _identity(), force)


def _open_verified_library(entry: Path, key: str) -> tuple[int, dict[str, Any]]:
    return _cache.open_verified_library(entry, key, _LIB_NAME)


def _load_verified(library: Path, key: str) -> tuple[Any, dict[str, Any]]:
    """tf.load_op_library on `library`, checked right before against its entry's manifest."""
    import tensorflow as tf

    module, manifest, fd = _cache.load_verified(library, key, tf.load_op_library)
    _state["library_fd"] = fd
    return module, manifest


def load() -> Any:
    """The loaded op module, building it at first use; raises OpLibraryError."""
    return _cache.load_once(_state, _lock, "FUSEDOPT_DISABLE_TF_OPS", _build_and_load)


def _build_and_load() -> tuple[Any, Path]:
    import tensorflow as tf

    module, manifest, _state["library_fd"], path = _cache.build_and_load(_LIBRARY, tf.load_op_library)
    _register_gradients(module)
    for part in _OPTIONAL:
        _state[f"{part}_kernels"] = bool(manifest.get(f"{part}_kernels"))
        _state[f"{part}_error"] = manifest.get(f"{part}_error")
    return module, path


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
    # (the XLA kernels are CPU-only: under XLA, GPU variables take Keras's update)
    return device == "GPU" and gpu and usable() and gpu_kernels_usable() and not in_xla_context()


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


def in_xla_context() -> bool:
    """Whether the graph being built is compiled by XLA (``jit_compile=True``)."""
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def usable() -> bool:
    """The fused ops can run here: the TensorFlow backend, the library loads (else one
    warning, see `available`), and outside an XLA context unless the library has its XLA
    kernels (one custom call per op; see `xla_kernels_usable`)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return False
    if in_xla_context():
        return available() and bool(_state.get("xla_kernels"))
    return available()


def available() -> bool:
    """Whether the fused ops can be used; warns once (and only once) if not."""
    return _cache.loads_or_warns(_state, load, "the TensorFlow op library is unavailable, so "
                                 "fusedopt.keras optimizers use Keras's own update (same numbers, not fused)")


def status() -> dict[str, Any]:
    """Whether the op library is loaded, where, why not, and what the cache holds ("cache");
    never builds, loads or runs a compiler."""
    return {**_cache.status(_state, _LIBRARY),
            **{f"{part}_{what}": (bool(_state.get(f"{part}_kernels")) if what == "kernels"
                                  else _state.get(f"{part}_error"))
               for part in _OPTIONAL for what in ("kernels", "error")}}
