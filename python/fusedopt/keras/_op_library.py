"""Build, cache, verify and load the TensorFlow op library (cpp/tf) at first use.

A TensorFlow C++ binary is tied to one TF release, so the thin TF glue is
compiled against the TensorFlow installed at run time; the math is already
compiled in the package (libfusedopt_engine). ``fusedopt build-ops`` or
``fusedopt.keras.prebuild()`` build it ahead of time; otherwise the first
fused step does.

Builds are cached under ``$FUSEDOPT_CACHE_DIR`` (default
``$XDG_CACHE_HOME/fusedopt``, else ``~/.cache/fusedopt``), one entry per
cache key (package version, sources, TF version, flags, compiler); a lock
file makes concurrent processes build once. What the cache holds is code
this process executes, so it is trusted only where no other user can write
it:

- The cache directory and its entries are created mode 0700. Before use,
  each must be a directory (not a symbolic link) owned by the current user
  and not writable by group or others, and every directory above the cache
  must be owned by the user or root and not writable by others unless
  sticky (as /tmp is). Else the build is refused with an ``OpLibraryError``
  naming the path and the fix, and fusedopt.keras falls back to Keras's
  update (one warning).
- The lock file is opened without following a symbolic link; the library
  (mode 0700) and its manifest (0600) are written as new files renamed into
  place, never through an existing path.
- Right before ``tf.load_op_library``, the entry's manifest (written by the
  same build; owned by the user, not group/other-writable) must record this
  build's cache key and the SHA-256 of the library file, which is opened
  and hashed; on Linux that open file is what is loaded (``/proc/self/fd``),
  so only its owner could change it in between. A missing, stale, corrupt
  or tampered entry is rebuilt, never loaded.
- `status()` runs no compiler (no process at all): it reports whether a
  verified entry for these sources and this TensorFlow exists, from the
  manifests.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shlex
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_SOURCES = ("fused_update_ops.cc", "fused_update_kernels.cc", "regularizer_dropout_ops.cc",
            "regularizer_dropout_kernels.cc")
# The fused update ops' GPU kernels: built where TensorFlow has CUDA and the
# engine its CUDA kernels; where they fail to compile, the library is built
# without them (CPU kernels only) and status() says why.
_GPU_SOURCES = ("fused_update_kernels_gpu.cc",)
_HEADERS = ("fused_update_ops.h", "fused_update_kernel.h", "engine_status.h", "input_shapes.h")
_LIB_NAME = "fusedopt_tf_ops.so"
_MANIFEST_NAME = "manifest.json"
_LOCK_NAME = "build.lock"
NOT_BUILT = "not built yet"
_PRIVATE_FIX = "set FUSEDOPT_CACHE_DIR to a private directory"

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


# -- trust checks -------------------------------------------------------------------------------
def _untrusted(path: Path, problem: str, fix: str) -> OpLibraryError:
    return OpLibraryError(f"refusing the op library cache: {path} {problem}, so another user could "
                          f"plant the code this process would load; {fix}")


def _check_private(st: os.stat_result, path: Path, kind: str) -> None:
    """Refuse `path` (`st` is its lstat or fstat) unless it is a `kind` ("directory" or
    "file"), not a symbolic link, owned by this user and writable by no one else."""
    is_dir = kind == "directory"
    # An entry's files are rebuilt once removed; the directories are the user's to fix.
    fix = _PRIVATE_FIX if is_dir else "remove it (fusedopt rebuilds it)"
    if stat.S_ISLNK(st.st_mode):
        raise _untrusted(path, "is a symbolic link", fix)
    if not (stat.S_ISDIR if is_dir else stat.S_ISREG)(st.st_mode):
        raise _untrusted(path, f"is not a {kind}", fix)
    if st.st_uid != os.getuid():
        raise _untrusted(path, f"is owned by uid {st.st_uid}, not by this user (uid {os.getuid()})", fix)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(st.st_mode)
        raise _untrusted(path, f"is writable by group or others (mode {mode:04o})",
                         f"run `chmod 700 {path}` or {fix}" if is_dir else fix)


def _check_ancestors(path: Path) -> None:
    """Every directory above `path` (resolved) is owned by this user or root and not writable
    by others unless sticky (as /tmp is): else another user could swap the cache for theirs."""
    for ancestor in path.parents:
        st = os.stat(ancestor)
        if st.st_uid not in (0, os.getuid()):
            raise _untrusted(ancestor, f"(above the cache) is owned by uid {st.st_uid}", _PRIVATE_FIX)
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            raise _untrusted(ancestor, f"(above the cache) is writable by group or others and not sticky "
                             f"(mode {stat.S_IMODE(st.st_mode):04o})", _PRIVATE_FIX)


def _make_private_dirs(path: Path) -> None:
    """Create `path` and its missing parents, each mode 0700."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # made meanwhile by another process; the caller checks it
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o700)  # mkdir's mode is masked by the umask
        finally:
            os.close(fd)


def _private_root(create: bool) -> Path | None:
    """The checked cache directory, created (with missing parents) if `create`; None where it
    does not exist and `create` is false. Raises OpLibraryError where it is not trusted."""
    root = Path(os.path.abspath(_cache_root()))
    if create:
        _make_private_dirs(root)
    elif not os.path.lexists(root):
        return None
    # Used through its resolved parents from here on (a link above it cannot be swapped later);
    # the cache directory itself must not be a link.
    root = Path(os.path.realpath(root.parent)) / root.name
    _check_ancestors(root)
    _check_private(os.lstat(root), root, "directory")
    return root


def _private_entry(root: Path, key: str) -> Path:
    """The checked entry directory for `key` in the checked `root`, created if missing."""
    entry = root / key
    _make_private_dirs(entry)
    _check_private(os.lstat(entry), entry, "directory")
    return entry


def _open_private_file(path: Path, flags: int = os.O_RDONLY) -> int:
    """`path` opened (new files mode 0600) without following a symbolic link, and refused
    unless it is a file this user owns and no one else can write."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EMLINK):  # how O_NOFOLLOW reports a link
            raise _untrusted(path, "is a symbolic link", "remove it (fusedopt rebuilds it)") from err
        raise
    try:
        _check_private(os.fstat(fd), path, "file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_private_file(path: Path, data: bytes) -> None:
    """Write `path` (mode 0600) as a new file renamed over it, never through what is there."""
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + "-", dir=path.parent)  # O_EXCL, 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _sha256_of(fd: int) -> str:
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _read_manifest(entry: Path) -> dict[str, Any]:
    """The manifest of the checked `entry`, itself checked (see `_open_private_file`)."""
    path = entry / _MANIFEST_NAME
    with os.fdopen(_open_private_file(path), "rb") as f:
        data = f.read()
    try:
        manifest = json.loads(data)
    except ValueError as err:
        raise OpLibraryError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise OpLibraryError(f"{path} is not a JSON object")
    return manifest


def _open_verified_library(entry: Path, key: str) -> tuple[int, dict[str, Any]]:
    """The checked `entry`'s library, opened (the caller closes the fd), and its manifest,
    after checking that the manifest records `key` and the SHA-256 of exactly the bytes
    behind the fd. Raises OpLibraryError (or OSError) saying what does not hold."""
    manifest = _read_manifest(entry)
    if manifest.get("cache_key") != key:
        raise OpLibraryError(f"{entry / _MANIFEST_NAME} records cache key {manifest.get('cache_key')!r}, "
                             f"not {key!r}")
    library = entry / _LIB_NAME
    fd = _open_private_file(library)
    try:
        if _sha256_of(fd) != manifest.get("sha256"):
            raise OpLibraryError(f"{library} does not match the SHA-256 its manifest records "
                                 "(changed after it was built)")
    except BaseException:
        os.close(fd)
        raise
    return fd, manifest


@contextlib.contextmanager
def _build_lock(entry: Path) -> Iterator[None]:
    """Hold the checked `entry`'s lock: one builder; the others wait, then reuse its build."""
    fd = _open_private_file(entry / _LOCK_NAME, os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- the build ----------------------------------------------------------------------------------
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


def _compile_and_link(build_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Compile and link the op library in `build_dir`: its path, and what the manifest
    records of how it was built."""
    manifest: dict[str, Any] = {"gpu_kernels": gpu_kernels_wanted()}
    compiled = _compile_all(_sources(manifest["gpu_kernels"]), build_dir)
    for source in _GPU_SOURCES:
        # The CPU kernels must not depend on the GPU glue compiling.
        if source in compiled and compiled[source][1] is not None:
            manifest = {"gpu_kernels": False, "gpu_error": compiled.pop(source)[1]}
    errors = [err for _, err in compiled.values() if err is not None]
    if errors:
        raise OpLibraryError("compiling the TensorFlow op library failed:\n" + "\n".join(errors))
    library = build_dir / _LIB_NAME
    cmd = link_command([obj for obj, _ in compiled.values()], library)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise OpLibraryError("linking the TensorFlow op library failed:\n"
                             + " ".join(cmd) + "\n" + proc.stderr[-4000:])
    manifest["command"] = cmd
    return library, manifest


def _inputs_digest() -> str:
    """Hash of everything the binary depends on but the compiler's version: found without
    running anything, so that `status()` can match entries."""
    import tensorflow as tf

    from fusedopt import __version__

    h = hashlib.sha256()
    commands = [compile_command(source, Path("OBJ")) for source in _sources(gpu_kernels_wanted())]
    commands.append(link_command([Path("OBJ")], Path("OUT")))
    for part in (__version__, tf.__version__, sys.platform, *(" ".join(c) for c in commands)):
        h.update(part.encode())
        h.update(b"\0")
    for name in _SOURCES + _GPU_SOURCES + _HEADERS:
        h.update((_source_dir() / name).read_bytes())
    for header in sorted((_PACKAGE_DIR / "include" / "fusedopt").rglob("*.h")):  # c_api.h, the math
        h.update(header.read_bytes())
    return h.hexdigest()


def _identity() -> dict[str, str]:
    """What an entry is built for, as its manifest records it: the inputs digest, the
    compiler's version (this runs the compiler) and the cache key of both, which names it."""
    inputs = _inputs_digest()
    compiler = _compiler_version(_compiler())
    key = hashlib.sha256(f"{inputs}\0{compiler}".encode()).hexdigest()[:24]
    return {"cache_key": key, "inputs": inputs, "compiler": compiler}


def cache_key() -> str:
    """Hash of everything the binary depends on (runs the compiler for its version)."""
    return _identity()["cache_key"]


def _build(identity: dict[str, str], force: bool) -> Path:
    """Build the library for `identity` into its checked entry unless a verified one is there
    (or `force`); return its path."""
    entry = _private_entry(_private_root(create=True), identity["cache_key"])
    with _build_lock(entry):
        if not force:
            try:
                os.close(_open_verified_library(entry, identity["cache_key"])[0])
                return entry / _LIB_NAME
            except (OSError, OpLibraryError):
                pass  # missing, stale, corrupt or tampered: rebuilt
        with tempfile.TemporaryDirectory(prefix=".build-", dir=entry) as build_dir:  # mode 0700
            built, manifest = _compile_and_link(Path(build_dir))
            fd = os.open(built, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, 0o700)  # the linker's mode follows the umask
                manifest.update(identity, sha256=_sha256_of(fd))
            finally:
                os.close(fd)
            os.replace(built, entry / _LIB_NAME)
        _write_private_file(entry / _MANIFEST_NAME, json.dumps(manifest).encode())
    return entry / _LIB_NAME


def build(force: bool = False) -> Path:
    """Build the op library into the checked cache (unless a verified entry is there, or
    `force`) and return its path; raises OpLibraryError where the cache is not trusted."""
    return _build(_identity(), force)


def _path_of_open_file(fd: int, path: Path) -> str:
    """A name that opens exactly the file behind `fd` (/proc/self/fd/N on Linux), else `path`."""
    proc = f"/proc/self/fd/{fd}"
    return proc if os.path.exists(proc) else str(path)


def _load_verified(library: Path, key: str) -> tuple[Any, dict[str, Any]]:
    """tf.load_op_library on `library`, checked right before against its entry's manifest
    (see `_open_verified_library`): the module and the manifest."""
    import tensorflow as tf

    fd, manifest = _open_verified_library(library.parent, key)
    try:
        module = tf.load_op_library(_path_of_open_file(fd, library))
    except BaseException:
        os.close(fd)
        raise
    # Kept open for the process's life: TF caches a loaded library by its name, and
    # /proc/self/fd/N must not come to name another file.
    _state["library_fd"] = fd
    return module, manifest


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
            identity = _identity()
            path = _build(identity, force=False)
            try:
                module, manifest = _load_verified(path, identity["cache_key"])
            except Exception:  # a stale, corrupt or tampered entry: rebuild once
                path = _build(identity, force=True)
                module, manifest = _load_verified(path, identity["cache_key"])
        except Exception as err:  # noqa: BLE001 - any failure means "fall back"
            _state["error"] = f"{type(err).__name__}: {err}"
            raise OpLibraryError(_state["error"]) from err
        _register_gradients(module)
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


def _cache_report() -> str:
    """What the cache holds for this fusedopt, these sources and this TensorFlow, from the
    entries' manifests: found without building or running a compiler (which compiler an
    entry was built with is checked at first use)."""
    if _state["module"] is not None:
        return "loaded (verified against its manifest)"
    try:
        root = _private_root(create=False)
        if root is None:
            return NOT_BUILT
        inputs = _inputs_digest()
        for entry in sorted(root.iterdir()):
            try:
                _check_private(os.lstat(entry), entry, "directory")
                if _read_manifest(entry).get("inputs") != inputs:
                    continue
                fd, manifest = _open_verified_library(entry, entry.name)
                os.close(fd)
                return f"built: {entry / _LIB_NAME} (compiler: {manifest.get('compiler')})"
            except (OSError, OpLibraryError):
                continue  # not a valid entry: a build replaces it
        return NOT_BUILT
    except OpLibraryError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - a status query reports, never fails
        return f"unknown ({type(err).__name__}: {err})"


def status() -> dict[str, Any]:
    """Whether the op library is loaded, where, why not, and what the cache holds ("cache");
    never builds, loads or runs a compiler."""
    return {"loaded": _state["module"] is not None, "path": str(_state["path"]) if _state["path"] else None,
            "error": _state["error"], "cache_dir": str(_cache_root()), "cache": _cache_report(),
            "gpu_kernels": bool(_state.get("gpu_kernels")), "gpu_error": _state.get("gpu_error")}
