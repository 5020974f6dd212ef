"""The op library cache's trust model (issue 12, defect 6).

The cache holds a shared library that `tf.load_op_library` executes, so a
cache another user can write lets them plant code. Every test here but the
last runs without a compiler: the compile-and-link step is replaced by one
that writes known bytes, the compiler's version is fixed and
`tf.load_op_library` records what it was given, so that the checks (owner,
modes, links, manifest, hash) are exercised on the real cache code in
milliseconds. The last test builds and loads the real library once, in a
fresh process.

Earlier tests (tests/test_keras_op.py) only covered a corrupt library with
its manifest intact, in a cache made with default permissions: nothing
checked who could write the directory, the lock or the manifest.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tensorflow as tf

import fusedopt.keras as fk
from fusedopt.bench import cli
from fusedopt.keras import _op_library as L
from keras_helpers import run_python

# Another user to hand files to: nobody (only root may chown).
OTHER_UID = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@dataclass
class FakeToolchain:
    """Records the fake builds and what reached tf.load_op_library."""

    root: Path
    builds: list[bytes] = field(default_factory=list)
    loads: list[tuple[str, bytes]] = field(default_factory=list)

    def library_bytes(self) -> bytes:
        return f"fake op library, build {len(self.builds) + 1}".encode()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fresh op library state and cache ($FUSEDOPT_CACHE_DIR = tmp_path/cache, not yet
    made) with the compiler, the linker and tf.load_op_library replaced."""
    toolchain = FakeToolchain(root=tmp_path / "cache")
    monkeypatch.setenv("FUSEDOPT_CACHE_DIR", str(toolchain.root))
    monkeypatch.delenv("FUSEDOPT_DISABLE_TF_OPS", raising=False)
    monkeypatch.setattr(L, "_state", {"module": None, "error": None, "path": None, "tried": False})
    monkeypatch.setattr(L, "_compiler_version", lambda cxx: "c++ (fake) 1.0")

    def compile_and_link(build_dir: Path):
        data = toolchain.library_bytes()
        (build_dir / L._LIB_NAME).write_bytes(data)
        toolchain.builds.append(data)
        return build_dir / L._LIB_NAME, {"gpu_kernels": False, "command": ["fake-link"]}

    def load_op_library(path: str):
        with open(path, "rb") as f:
            toolchain.loads.append((path, f.read()))
        return "fake module"

    monkeypatch.setattr(L, "_compile_and_link", compile_and_link)
    monkeypatch.setattr(tf, "load_op_library", load_op_library)
    monkeypatch.setattr(L, "_register_gradients", lambda module: None)
    yield toolchain
    if "library_fd" in L._state:
        os.close(L._state["library_fd"])


def _entry(toolchain: FakeToolchain) -> Path:
    return toolchain.root / L.cache_key()


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- the cache directory ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o770, 0o703], ids=["group-writable", "other-writable"])
def test_writable_cache_directory_is_refused_and_keras_falls_back(fake, mode):
    """A group- or other-writable cache directory was used, so another user could plant
    the library; now the build is refused naming the path and the fix, prebuild() raises
    it, and fusedopt.keras falls back with its one warning."""
    fake.root.mkdir()
    fake.root.chmod(mode)
    with pytest.raises(L.OpLibraryError) as refused:
        L.build()
    assert str(fake.root) in str(refused.value) and f"chmod 700 {fake.root}" in str(refused.value)
    with pytest.raises(fk.OpLibraryError, match="writable by group or others"):
        fk.prebuild()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert L.available() is False and L.available() is False
    assert len(caught) == 1 and str(fake.root) in str(caught[0].message)
    assert fake.builds == [] and fake.loads == []


@needs_root
def test_cache_directory_owned_by_another_user_is_refused(fake):
    """A cache directory owned by another user was used (they can write into it whatever
    its mode); now it is refused, naming the path and the owner."""
    fake.root.mkdir(mode=0o700)
    os.chown(fake.root, OTHER_UID, -1)
    with pytest.raises(L.OpLibraryError, match=f"owned by uid {OTHER_UID}") as refused:
        L.build()
    assert str(fake.root) in str(refused.value) and "FUSEDOPT_CACHE_DIR" in str(refused.value)
    assert fake.builds == []


def test_linked_cache_directory_or_entry_is_refused(fake, tmp_path):
    """The cache directory and its entries were followed through symbolic links (one to
    a directory another user controls plants the library); now a link is refused."""
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    fake.root.symlink_to(target)
    with pytest.raises(L.OpLibraryError, match="is a symbolic link"):
        L.build()
    fake.root.unlink()
    fake.root.mkdir(mode=0o700)
    entry = _entry(fake)
    entry.symlink_to(target)
    with pytest.raises(L.OpLibraryError, match="is a symbolic link") as refused:
        L.build()
    assert str(entry) in str(refused.value)
    assert fake.builds == [] and list(target.iterdir()) == []


def test_directory_above_the_cache_writable_by_others_is_refused_unless_sticky(fake, tmp_path, monkeypatch):
    """A cache under a directory others can write (not sticky) could be renamed away and
    replaced by theirs; such a parent is refused, a sticky one (as /tmp) is not."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("FUSEDOPT_CACHE_DIR", str(shared / "cache"))
    with pytest.raises(L.OpLibraryError, match="above the cache") as refused:
        L.build()
    assert str(shared) in str(refused.value)
    shared.chmod(0o1777)
    L.build()
    assert len(fake.builds) == 1


def test_created_directories_and_files_are_private(fake, tmp_path, monkeypatch):
    """The cache was created with default permissions (group/other-writable under a
    permissive umask); now every directory it creates is 0700 and its files 0600 (the
    library 0700), whatever the umask."""
    monkeypatch.setenv("FUSEDOPT_CACHE_DIR", str(tmp_path / "missing" / "cache"))
    old_umask = os.umask(0)
    try:
        library = L.build()
    finally:
        os.umask(old_umask)
    entry = library.parent
    for directory in (tmp_path / "missing", tmp_path / "missing" / "cache", entry):
        assert _mode(directory) == 0o700, directory
    assert _mode(entry / "build.lock") == 0o600
    assert _mode(entry / "manifest.json") == 0o600
    assert _mode(library) == 0o700
    assert sorted(p.name for p in entry.iterdir()) == ["build.lock", "fusedopt_tf_ops.so", "manifest.json"]


def test_linked_lock_file_is_not_followed(fake, tmp_path):
    """The lock file was opened following symbolic links, so a link planted at its path
    made the build create or truncate a file elsewhere; now the build refuses it and
    writes nothing through it."""
    entry = L.build().parent
    (entry / "build.lock").unlink()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (entry / "build.lock").symlink_to(victim)
    with pytest.raises(L.OpLibraryError, match="is a symbolic link") as refused:
        L.build(force=True)
    assert str(entry / "build.lock") in str(refused.value)
    assert victim.read_text() == "precious" and len(fake.builds) == 1
    victim.unlink()  # a dangling link: O_CREAT must not create its target
    with pytest.raises(L.OpLibraryError, match="is a symbolic link"):
        L.build()
    assert not victim.exists()


# -- the manifest and the library ---------------------------------------------------------------
def test_tampered_library_is_rebuilt_and_never_loaded(fake):
    """A library whose bytes changed after its build (manifest unchanged) must never reach
    tf.load_op_library: load() rebuilds it and loads the rebuilt file, the very file it
    hashed (on Linux through /proc/self/fd)."""
    library = L.build()
    library.write_bytes(b"planted code")
    L.load()
    assert len(fake.builds) == 2
    assert [data for _, data in fake.loads] == [fake.builds[1]]
    if sys.platform.startswith("linux"):
        assert fake.loads[0][0] == f"/proc/self/fd/{L._state['library_fd']}"
    manifest = json.loads((library.parent / "manifest.json").read_text())
    assert manifest["cache_key"] == library.parent.name == L.cache_key()
    assert L.status()["loaded"] is True and L.status()["path"] == str(library)


def test_library_changed_after_the_build_is_refused_right_before_loading(fake):
    """The hash is checked right before tf.load_op_library, not only when the build
    looks for a valid entry: a library replaced in between is refused."""
    library = L.build()
    library.write_bytes(b"planted code")
    with pytest.raises(L.OpLibraryError, match="does not match the SHA-256") as refused:
        L._load_verified(library, L.cache_key())
    assert str(library) in str(refused.value) and fake.loads == []


def _forge_manifest(entry: Path, **changes) -> None:
    """Replace the entry's library and write a manifest that vouches for it."""
    planted = b"planted code"
    (entry / L._LIB_NAME).write_bytes(planted)
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest.update(sha256=L.hashlib.sha256(planted).hexdigest(), **changes)
    (entry / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("how", ["group-writable", "other user", "linked", "another cache key"])
def test_untrusted_manifest_is_not_believed(fake, tmp_path, how):
    """The manifest sat beside the library with no checks of its own, so whoever could
    replace the library could write a manifest vouching for it; now a manifest must be
    the user's own file (not a link, not group/other-writable) recording this build's
    cache key, or the entry is rebuilt."""
    if how == "other user" and os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    entry = L.build().parent
    manifest = entry / "manifest.json"
    _forge_manifest(entry, **({"cache_key": "0" * 24} if how == "another cache key" else {}))
    if how == "group-writable":
        manifest.chmod(0o664)
    elif how == "other user":
        os.chown(manifest, OTHER_UID, -1)
    elif how == "linked":
        forged = tmp_path / "forged.json"
        manifest.rename(forged)
        manifest.symlink_to(forged)
    with pytest.raises((L.OpLibraryError, OSError)):
        L._open_verified_library(entry, entry.name)
    L.load()
    assert len(fake.builds) == 2 and [data for _, data in fake.loads] == [fake.builds[1]]


# -- status queries -----------------------------------------------------------------------------
@pytest.fixture
def no_processes(monkeypatch):
    """Every process start is recorded and refused."""
    started: list[object] = []

    def refuse(*args, **kwargs):
        started.append(args[0] if args else kwargs.get("args"))
        raise AssertionError(f"a status query started a process: {started[-1]}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(os, "system", refuse)
    return started


def _info_op_library(capsys) -> dict:
    assert cli.main(["info", "--json"]) == 0
    return json.loads(capsys.readouterr().out)["op_library"]


def test_status_and_info_run_no_compiler(fake, no_processes, capsys, monkeypatch):
    """op_library_status() and `fusedopt info` built the library (running `c++
    --version`, then the compiler) just to report on it; now they start no process and
    say what the cache holds: not built yet, a verified build, or why it is refused."""
    for status in (fk.op_library_status(), _info_op_library(capsys)):
        assert status["loaded"] is False and status["cache"] == L.NOT_BUILT
        assert status["cache_dir"] == str(fake.root)
    library = L.build()  # the fake toolchain starts no process either
    for status in (fk.op_library_status(), _info_op_library(capsys)):
        assert status["cache"] == f"built: {library} (compiler: c++ (fake) 1.0)"
    library.write_bytes(b"planted code")
    assert fk.op_library_status()["cache"] == L.NOT_BUILT
    fake.root.chmod(0o777)
    assert str(fake.root) in _info_op_library(capsys)["cache"]
    assert fake.loads == [] and no_processes == []


# -- the real build -----------------------------------------------------------------------------
PREBUILD_SCRIPT = r"""
import json, os, stat
os.umask(0)
import fusedopt.keras as fk
from fusedopt.keras import _op_library as L
before = fk.op_library_status()
after = fk.prebuild()
entry = os.path.dirname(after["path"])
modes = {name: stat.S_IMODE(os.lstat(os.path.join(entry, name)).st_mode) for name in os.listdir(entry)}
modes["."] = stat.S_IMODE(os.lstat(entry).st_mode)
print("REPORT" + json.dumps({"before": before, "after": after, "modes": modes,
                             "ops": hasattr(L.load(), "fusedopt_adam")}))
"""


def test_prebuild_builds_verifies_and_loads_the_real_library(tmp_path):
    """fusedopt.keras.prebuild() (new) compiles, verifies and loads the op library into a
    private cache; a status query before it reports "not built yet" rather than
    building. The one real build in this file (~30 s)."""
    proc = run_python(PREBUILD_SCRIPT, env={"FUSEDOPT_CACHE_DIR": str(tmp_path / "cache")}, timeout=420)
    report = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT")][-1][6:])
    assert report["before"]["loaded"] is False and report["before"]["cache"] == L.NOT_BUILT
    assert report["after"]["loaded"] is True and report["after"]["cache"].startswith("loaded"), report
    assert report["ops"] is True
    assert report["modes"] == {".": 0o700, "build.lock": 0o600, "manifest.json": 0o600,
                               "fusedopt_tf_ops.so": 0o700}, report["modes"]
    assert _mode(tmp_path / "cache") == 0o700
