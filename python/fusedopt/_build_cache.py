"""The cache of native libraries fusedopt compiles at first use, and the checks
that make loading one safe.

A library built against a framework (TensorFlow's op library, the XLA FFI
handlers JAX loads) is tied to that framework's release, so it is compiled
at run time against the one installed; the math is already compiled in the
package (libfusedopt_engine). Builds are cached under ``$FUSEDOPT_CACHE_DIR``
(default ``$XDG_CACHE_HOME/fusedopt``, else ``~/.cache/fusedopt``), one entry
per cache key (package version, sources, framework version, flags,
compiler); a lock file makes concurrent processes build once. What the cache
holds is code this process executes, so it is trusted only where no other
user can write it:

- The cache directory and its entries are created mode 0700. Before use,
  each must be a directory (not a symbolic link) owned by the current user
  and not writable by group or others, and every directory above the cache
  must be owned by the user or root and not writable by others unless
  sticky (as /tmp is). Else the build is refused with an ``OpLibraryError``
  naming the path and the fix, and the caller falls back (one warning).
- The lock file is opened without following a symbolic link; the library
  (mode 0700) and its manifest (0600) are written as new files renamed into
  place, never through an existing path.
- Right before the library is loaded, the entry's manifest (written by the
  same build; owned by the user, not group/other-writable) must record this
  build's cache key and the SHA-256 of the library file, which is opened
  and hashed; on Linux that open file is what is loaded (``/proc/self/fd``),
  so only its owner could change it in between. A missing, stale, corrupt
  or tampered entry is rebuilt, never loaded.
- `cache_report` runs no compiler (no process at all): it reports whether a
  verified entry for these inputs exists, from the manifests.
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
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

MANIFEST_NAME = "manifest.json"
_LOCK_NAME = "build.lock"
NOT_BUILT = "not built yet"
_PRIVATE_FIX = "set FUSEDOPT_CACHE_DIR to a private directory"


class OpLibraryError(RuntimeError):
    """A library fusedopt builds at first use (the TensorFlow op library, the
    XLA FFI handlers) could not be built or loaded."""


def cache_root() -> Path:
    root = os.environ.get("FUSEDOPT_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fusedopt"


# -- trust checks -------------------------------------------------------------------------------
def _untrusted(path: Path, problem: str, fix: str) -> OpLibraryError:
    return OpLibraryError(f"refusing the fusedopt build cache: {path} {problem}, so another user could "
                          f"plant the code this process would load; {fix}")


def check_private(st: os.stat_result, path: Path, kind: str) -> None:
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


def private_root(create: bool) -> Path | None:
    """The checked cache directory, created (with missing parents) if `create`; None where it
    does not exist and `create` is false. Raises OpLibraryError where it is not trusted."""
    root = Path(os.path.abspath(cache_root()))
    if create:
        _make_private_dirs(root)
    elif not os.path.lexists(root):
        return None
    # Used through its resolved parents from here on (a link above it cannot be swapped later);
    # the cache directory itself must not be a link.
    root = Path(os.path.realpath(root.parent)) / root.name
    _check_ancestors(root)
    check_private(os.lstat(root), root, "directory")
    return root


def private_entry(root: Path, key: str) -> Path:
    """The checked entry directory for `key` in the checked `root`, created if missing."""
    entry = root / key
    _make_private_dirs(entry)
    check_private(os.lstat(entry), entry, "directory")
    return entry


def open_private_file(path: Path, flags: int = os.O_RDONLY) -> int:
    """`path` opened (new files mode 0600) without following a symbolic link, and refused
    unless it is a file this user owns and no one else can write."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EMLINK):  # how O_NOFOLLOW reports a link
            raise _untrusted(path, "is a symbolic link", "remove it (fusedopt rebuilds it)") from err
        raise
    try:
        check_private(os.fstat(fd), path, "file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private_file(path: Path, data: bytes) -> None:
    """Write `path` (mode 0600) as a new file renamed over it, never through what is there."""
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + "-", dir=path.parent)  # O_EXCL, 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def sha256_of(fd: int) -> str:
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    return h.hexdigest()


def read_manifest(entry: Path) -> dict[str, Any]:
    """The manifest of the checked `entry`, itself checked (see `_open_private_file`)."""
    path = entry / MANIFEST_NAME
    with os.fdopen(open_private_file(path), "rb") as f:
        data = f.read()
    try:
        manifest = json.loads(data)
    except ValueError as err:
        raise OpLibraryError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise OpLibraryError(f"{path} is not a JSON object")
    return manifest


def open_verified_library(entry: Path, key: str, lib_name: str) -> tuple[int, dict[str, Any]]:
    """The checked `entry`'s library `lib_name`, opened (the caller closes the fd), and its manifest,
    after checking that the manifest records `key` and the SHA-256 of exactly the bytes
    behind the fd. Raises OpLibraryError (or OSError) saying what does not hold."""
    manifest = read_manifest(entry)
    if manifest.get("cache_key") != key:
        raise OpLibraryError(f"{entry / MANIFEST_NAME} records cache key {manifest.get('cache_key')!r}, "
                             f"not {key!r}")
    library = entry / lib_name
    fd = open_private_file(library)
    try:
        if sha256_of(fd) != manifest.get("sha256"):
            raise OpLibraryError(f"{library} does not match the SHA-256 its manifest records "
                                 "(changed after it was built)")
    except BaseException:
        os.close(fd)
        raise
    return fd, manifest


@contextlib.contextmanager
def build_lock(entry: Path) -> Iterator[None]:
    """Hold the checked `entry`'s lock: one builder; the others wait, then reuse its build."""
    fd = open_private_file(entry / _LOCK_NAME, os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)



# -- compiling ----------------------------------------------------------------------------------
def compiler() -> list[str]:
    return shlex.split(os.environ.get("CXX", "c++"))


def compiler_version(cxx: list[str]) -> str:
    try:
        out = subprocess.run(cxx + ["--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0] if out.stdout else ""
    except (OSError, subprocess.SubprocessError) as err:
        raise OpLibraryError(f"no C++ compiler found ({' '.join(cxx)}): {err}") from err


def compile_all(commands: dict[str, tuple[list[str], Path]]) -> dict[str, tuple[Path, str | None]]:
    """Run the compile `commands` (source -> (command, object)) in parallel, one process per
    CPU: source -> (object, error or None)."""
    results: dict[str, tuple[Path, str | None]] = {}
    pending = list(commands)
    running: list[tuple[str, Path, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < max(1, os.cpu_count() or 1):
            source = pending.pop(0)
            command, obj = commands[source]
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            running.append((source, obj, proc))
        source, obj, proc = running.pop(0)
        _, err = proc.communicate()
        results[source] = (obj, None if proc.returncode == 0 else f"compiling {source} failed:\n{err[-3000:]}")
    return results


def link(command: list[str], what: str) -> None:
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise OpLibraryError(f"linking {what} failed:\n" + " ".join(command) + "\n" + proc.stderr[-4000:])


# -- one cached library -------------------------------------------------------------------------
@dataclass(frozen=True)
class Library:
    """What the cache needs of one first-use library.

    `inputs` gives everything the binary depends on but the compiler's version
    (package version, framework version, commands, sources), found without
    running anything; `compile_and_link(build_dir)` builds it there and returns
    its path and what its manifest records; `compiler_version()` runs the
    compiler."""

    lib_name: str
    inputs: Callable[[], Iterable[bytes]]
    compile_and_link: Callable[[Path], tuple[Path, dict[str, Any]]]
    compiler_version: Callable[[], str]


def inputs_digest(library: Library) -> str:
    h = hashlib.sha256()
    for part in library.inputs():
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()


def identity(library: Library) -> dict[str, str]:
    """What an entry is built for, as its manifest records it: the inputs digest, the
    compiler's version (this runs the compiler) and the cache key of both, which names it."""
    inputs = inputs_digest(library)
    compiler_id = library.compiler_version()
    key = hashlib.sha256(f"{inputs}\0{compiler_id}".encode()).hexdigest()[:24]
    return {"cache_key": key, "inputs": inputs, "compiler": compiler_id}


def build(library: Library, ident: dict[str, str], force: bool) -> Path:
    """Build `library` for `ident` into its checked entry unless a verified one is there
    (or `force`); return its path."""
    entry = private_entry(private_root(create=True), ident["cache_key"])
    with build_lock(entry):
        if not force:
            try:
                os.close(open_verified_library(entry, ident["cache_key"], library.lib_name)[0])
                return entry / library.lib_name
            except (OSError, OpLibraryError):
                pass  # missing, stale, corrupt or tampered: rebuilt
        with tempfile.TemporaryDirectory(prefix=".build-", dir=entry) as build_dir:  # mode 0700
            built, manifest = library.compile_and_link(Path(build_dir))
            fd = os.open(built, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, 0o700)  # the linker's mode follows the umask
                manifest.update(ident, sha256=sha256_of(fd))
            finally:
                os.close(fd)
            os.replace(built, entry / library.lib_name)
        write_private_file(entry / MANIFEST_NAME, json.dumps(manifest).encode())
    return entry / library.lib_name


def path_of_open_file(fd: int, path: Path) -> str:
    """A name that opens exactly the file behind `fd` (/proc/self/fd/N on Linux), else `path`."""
    proc = f"/proc/self/fd/{fd}"
    return proc if os.path.exists(proc) else str(path)


def load_verified(path: Path, key: str, loader: Callable[[str], Any]) -> tuple[Any, dict[str, Any], int]:
    """`loader` run on the library at `path`, checked right before against its entry's
    manifest (see `open_verified_library`): the module, the manifest and the open fd, which
    the caller keeps open for the process's life (a loader may cache a library by its name,
    and /proc/self/fd/N must not come to name another file)."""
    fd, manifest = open_verified_library(path.parent, key, path.name)
    try:
        module = loader(path_of_open_file(fd, path))
    except BaseException:
        os.close(fd)
        raise
    return module, manifest, fd


def cache_report(library: Library, loaded: bool) -> str:
    """What the cache holds for `library`'s inputs, from the entries' manifests: found without
    building or running a compiler (which compiler an entry was built with is checked at
    first use)."""
    if loaded:
        return "loaded (verified against its manifest)"
    try:
        root = private_root(create=False)
        if root is None:
            return NOT_BUILT
        inputs = inputs_digest(library)
        for entry in sorted(root.iterdir()):
            try:
                check_private(os.lstat(entry), entry, "directory")
                if read_manifest(entry).get("inputs") != inputs:
                    continue
                fd, manifest = open_verified_library(entry, entry.name, library.lib_name)
                os.close(fd)
                return f"built: {entry / library.lib_name} (compiler: {manifest.get('compiler')})"
            except (OSError, OpLibraryError):
                continue  # not a valid entry: a build replaces it
        return NOT_BUILT
    except OpLibraryError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - a status query reports, never fails
        return f"unknown ({type(err).__name__}: {err})"


def build_and_load(library: Library, loader: Callable[[str], Any]) -> tuple[Any, dict[str, Any], int, Path]:
    """`library` built (unless a verified entry is there) and loaded with `loader`; a stale,
    corrupt or tampered entry is rebuilt once. The module, its manifest, the open fd (kept
    open for the process's life: see `load_verified`) and the library's path."""
    ident = identity(library)
    path = build(library, ident, force=False)
    try:
        module, manifest, fd = load_verified(path, ident["cache_key"], loader)
    except Exception:  # noqa: BLE001 - rebuilt, then loaded or failed for good
        path = build(library, ident, force=True)
        module, manifest, fd = load_verified(path, ident["cache_key"], loader)
    return module, manifest, fd, path


# -- a first-use library's life in one process ---------------------------------------------------
# `state` is the caller's dict: "module", "error", "path", "tried" (and "warned", "library_fd").
def load_once(state: dict[str, Any], lock: Any, disable_env: str, load: Callable[[], tuple[Any, Path]]) -> Any:
    """The module `load()` gives (module, path), tried once per process under `lock`;
    later calls return it, or raise the first failure again. Raises OpLibraryError."""
    with lock:
        if state["module"] is not None:
            return state["module"]
        if state["tried"]:
            raise OpLibraryError(state["error"])
        state["tried"] = True
        try:
            if os.environ.get(disable_env):
                raise OpLibraryError(f"disabled by the {disable_env} environment variable")
            module, path = load()
        except Exception as err:  # noqa: BLE001 - any failure means "fall back"
            state["error"] = f"{type(err).__name__}: {err}"
            raise OpLibraryError(state["error"]) from err
        state["module"], state["path"] = module, path
        return module


def loads_or_warns(state: dict[str, Any], load: Callable[[], Any], consequence: str) -> bool:
    """Whether `load()` succeeds; the first failure in a process warns once, saying the
    `consequence` and why."""
    import warnings

    try:
        load()
        return True
    except OpLibraryError as err:
        if not state.get("warned"):
            state["warned"] = True
            warnings.warn(f"fusedopt: {consequence}. Reason: {err}", RuntimeWarning, stacklevel=4)
        return False


def status(state: dict[str, Any], library: Library) -> dict[str, Any]:
    """Whether the library is loaded, where, why not, and what the cache holds ("cache");
    never builds, loads or runs a compiler."""
    return {"loaded": state["module"] is not None, "path": str(state["path"]) if state["path"] else None,
            "error": state["error"], "cache_dir": str(cache_root()),
            "cache": cache_report(library, state["module"] is not None)}
