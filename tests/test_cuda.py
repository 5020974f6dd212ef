"""The optional CUDA engine (cpp/cuda) and the CUDA-array paths of the Python API.

Tests marked ``gpu`` need a CUDA device (and PyTorch with CUDA, or CuPy) and
are skipped without one; they compare every rule, the dropout masks and the
regularizers with the CPU engine: masks bitwise, updates within the float32
table of tests/registry.py (the elementwise rules are expected bitwise too:
both engines compute in fp32 without FMA contraction, with IEEE division and
square root; reductions run in another order). The other tests run
everywhere: the CUDA sources compile where nvcc is, the engine has no hard
dependency on the CUDA driver, and a CUDA array reaching a build or a machine
without CUDA raises a TypeError naming the argument.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import registry
from registry import CASES, NUM_STEPS, PARALLEL_SHAPES, assert_lists_close, shapes_for

import fusedopt
from fusedopt import _core, _cuda
from fusedopt._dropout import _seed_words

REPO = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((REPO / "cpp" / "cuda").glob("*.cu"))


class FakeCudaArray:
    """Says it lives on cuda:0 (DLPack device (2, 0)) but cannot be exported."""

    shape = (3,)
    dtype = np.float32

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None, **kwargs):
        raise BufferError("a fake CUDA array")


# --------------------------------------------------------------------------
# Everywhere (no GPU needed)
# --------------------------------------------------------------------------

def test_build_info_reports_cuda():
    info = fusedopt.build_info()
    assert isinstance(info["cuda_compiled"], bool)
    assert info["cuda_compiled"] == _cuda.compiled()
    assert isinstance(info["cuda_devices"], int) and info["cuda_devices"] >= 0
    assert (info["cuda_runtime"] > 0) == info["cuda_compiled"]
    if info["cuda_devices"] == 0:
        assert info["cuda_status"] and info["cuda_status"] != "ok"


def test_build_has_cuda_where_nvcc_is():
    """With FUSEDOPT_CUDA=AUTO (the default) a machine with nvcc builds the CUDA
    kernels. Set FUSEDOPT_CUDA=OFF in the environment when testing an OFF build."""
    if os.environ.get("FUSEDOPT_CUDA", "AUTO").upper() in ("OFF", "0", "FALSE", "NO"):
        assert not fusedopt.build_info()["cuda_compiled"]
        return
    if shutil.which("nvcc") is None:
        pytest.skip("no nvcc on PATH: an AUTO build is CPU only")
    assert fusedopt.build_info()["cuda_compiled"], (
        "nvcc is on PATH but this build has no CUDA kernels: rebuild with FUSEDOPT_CUDA=AUTO, "
        "or set FUSEDOPT_CUDA=OFF when testing an OFF build")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_cuda_sources_compile(tmp_path):
    """Every CUDA translation unit compiles (to PTX for the oldest architecture,
    which is the front end and NVVM; ptxas runs in the package build)."""
    procs = []
    for src in CUDA_SOURCES:
        cmd = ["nvcc", "-std=c++17", "-ptx", "-arch=compute_75", "--fmad=false",
               f"-I{REPO / 'cpp' / 'include'}", f"-I{REPO / 'cpp' / 'src'}",
               f"-I{REPO / 'cpp' / 'cuda'}", str(src), "-o", str(tmp_path / (src.stem + ".ptx"))]
        procs.append((src.name, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                 stderr=subprocess.STDOUT, text=True)))
        if len(procs) % 4 == 0:  # a few at a time
            for _, p in procs[-4:]:
                p.wait()
    failures = []
    for name, p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            failures.append(f"{name}:\n{out}")
    assert not failures, "\n".join(failures)
    assert len(CUDA_SOURCES) >= 9


def _engine_library() -> Path:
    found = sorted(Path(fusedopt.__file__).parent.glob("libfusedopt_engine*.so*"))
    if not found:
        pytest.skip("no libfusedopt_engine next to the package")
    return found[0]


def test_engine_has_no_hard_cuda_dependency():
    """The engine links the CUDA runtime statically, which loads the driver at
    the first CUDA call: importing on a machine without a driver must work."""
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("no readelf")
    out = subprocess.run([readelf, "-d", str(_engine_library())], capture_output=True,
                         text=True, check=True).stdout
    needed = [line for line in out.splitlines() if "(NEEDED)" in line]
    assert needed
    assert not any("libcuda" in line or "libcudart" in line for line in needed), needed


def test_c_api_cuda_entry_points():
    lib = ctypes.CDLL(str(_engine_library()))
    lib.fusedopt_cuda_last_error.restype = ctypes.c_char_p
    assert lib.fusedopt_cuda_compiled() == int(_cuda.compiled())
    assert lib.fusedopt_cuda_available() == _cuda.device_count()
    if _cuda.device_count() == 0:
        # One tensor of 4 elements whose pointers are host memory: refused, with a reason.
        class Tensor(ctypes.Structure):
            _fields_ = [("param", ctypes.c_void_p), ("grad", ctypes.c_void_p),
                        ("state", ctypes.c_void_p * 4), ("size", ctypes.c_int64),
                        ("batch", ctypes.c_int64), ("rows", ctypes.c_int64),
                        ("cols", ctypes.c_int64), ("factored", ctypes.c_int32)]

        host = np.zeros(4, np.float32)
        t = Tensor(host.ctypes.data, host.ctypes.data, (ctypes.c_void_p * 4)(), 4, 1, 1, 1, 0)
        rule = lib.fusedopt_rule_id(b"sgd")
        lib.fusedopt_cuda_apply.argtypes = [
            ctypes.c_int, ctypes.c_int, ctypes.POINTER(Tensor), ctypes.c_int64,
            ctypes.POINTER(ctypes.c_double), ctypes.c_int64, ctypes.c_double, ctypes.c_double,
            ctypes.c_void_p]
        rc = lib.fusedopt_cuda_apply(rule, 0, ctypes.byref(t), 1, None, 1, 0.1, 0.0, None)
        assert rc == -1
        assert lib.fusedopt_cuda_last_error()
        assert np.all(host == 0)


def _no_cuda_here() -> bool:
    return not _cuda.compiled() or _cuda.device_count() == 0


def test_cuda_array_is_detected():
    assert _cuda.is_cuda_array(FakeCudaArray())
    assert not _cuda.is_cuda_array(np.zeros(3, np.float32))
    assert not _cuda.is_cuda_array(3.0)


@pytest.mark.skipif(not _no_cuda_here(), reason="this machine has a usable CUDA device")
def test_cuda_array_without_cuda_raises_naming_the_argument():
    """A CUDA array reaching a build without CUDA, or a machine without a
    device, gets a TypeError naming the argument, and nothing is written."""
    why = "no CUDA support" if not _cuda.compiled() else "no CUDA device"
    w = np.ones(3, np.float32)
    m, v = np.zeros(3, np.float32), np.zeros(3, np.float32)
    with pytest.raises(TypeError, match=rf"params\[0\] is a CUDA array .*{why}"):
        fusedopt.ops.adam_([FakeCudaArray()], [w], [m], [v], learning_rate=0.1)
    with pytest.raises(TypeError, match=rf"params\[0\] is a CUDA array .*{why}"):
        fusedopt.Adam([FakeCudaArray()])
    with pytest.raises(TypeError, match=rf"^x is a CUDA array .*{why}"):
        fusedopt.ops.dropout(FakeCudaArray(), 0.5, seed=1)
    with pytest.raises(TypeError, match=rf"^dy is a CUDA array .*{why}"):
        fusedopt.ops.dropout_backward(FakeCudaArray(), None, 0.5, seed=1)
    with pytest.raises(TypeError, match=rf"w\[0\] is a CUDA array .*{why}"):
        fusedopt.regularizers.l1l2_penalty([FakeCudaArray()], 0.1, 0.1)
    assert np.all(w == 1) and np.all(m == 0) and np.all(v == 0)


def test_mixed_cpu_and_cuda_arrays_raise_naming_the_argument():
    p, m, v = np.ones(3, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32)
    with pytest.raises(TypeError, match=r"grads\[0\] is a CUDA array but params\[0\] is a CPU array"):
        fusedopt.ops.adam_([p], [FakeCudaArray()], [m], [v], learning_rate=0.1)
    with pytest.raises(TypeError, match=r"momentum\[0\] is a CUDA array but params\[0\] is a CPU"):
        fusedopt.ops.adam_([p], [p.copy()], [FakeCudaArray()], [v], learning_rate=0.1)
    opt = fusedopt.Adam([p])
    with pytest.raises(TypeError, match=r"grads\[0\] is a CUDA array but params\[0\] is a CPU"):
        opt.step([FakeCudaArray()])
    with pytest.raises(TypeError, match=r"out\[0\] is a CUDA array but w\[0\] is a CPU array"):
        fusedopt.regularizers.l1l2_gradient([p], 0.1, 0.1, out=[FakeCudaArray()])
    assert np.all(p == 1) and np.all(m == 0) and np.all(v == 0) and opt.iterations == 0


# --------------------------------------------------------------------------
# GPU tests: PyTorch CUDA tensors (or CuPy arrays) against the CPU engine
# --------------------------------------------------------------------------

def _gpu_backend():
    """("torch" | "cupy", None) when a CUDA device is usable, else (None, reason)."""
    if not _cuda.compiled():
        return None, "fusedopt was built without CUDA"
    if _cuda.device_count() == 0:
        return None, _core.cuda_no_device_reason()
    try:
        import torch

        if torch.cuda.is_available():
            return "torch", None
    except ImportError:
        pass
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return "cupy", None
    except Exception:  # noqa: BLE001
        pass
    return None, "neither PyTorch with CUDA nor CuPy is available to make CUDA arrays"


BACKEND, NO_GPU_REASON = _gpu_backend()
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(BACKEND is None, reason=f"needs a CUDA device: {NO_GPU_REASON}")


def to_device(a: np.ndarray):
    if a is None:
        return None
    if BACKEND == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(a)).cuda()
    import cupy

    return cupy.asarray(a)


def to_host(x) -> np.ndarray:
    if x is None:
        return None
    return _cuda.to_numpy(x)


def synchronize():
    if BACKEND == "torch":
        import torch

        torch.cuda.synchronize()
    else:
        import cupy

        cupy.cuda.runtime.deviceSynchronize()


GPU_CASES = [c for c in CASES if c.kind != "muon"]
GPU_LAYOUTS = ["one-4097", "list", "tiny1000", "parallel"]


def _shapes(case, layout):
    return list(PARALLEL_SHAPES[case.kind]) if layout == "parallel" else shapes_for(case, layout)


def _compare(opt_gpu, opt_cpu, dtype, what):
    assert_lists_close([to_host(p) for p in opt_gpu.params], opt_cpu.params, dtype, f"{what}: params")
    for name in opt_cpu.slots:
        assert_lists_close([to_host(s) for s in opt_gpu.slots[name]], opt_cpu.slots[name], dtype,
                           f"{what}: slots[{name!r}]")


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", registry.DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("layout", GPU_LAYOUTS)
@pytest.mark.parametrize("case", GPU_CASES, ids=repr)
def test_every_rule_matches_the_cpu_engine(case, layout, dtype):
    shapes = _shapes(case, layout)
    rng = np.random.default_rng(7)
    params = registry.make_arrays(shapes, dtype, rng)
    grads = registry.grad_sequence(shapes, dtype, seed=11)
    opt_cpu = case.make(registry.copies(params))
    opt_gpu = case.make([to_device(p) for p in params])
    for step, gs in enumerate(grads):
        opt_cpu.step(gs)
        opt_gpu.step([to_device(g) for g in gs])
        synchronize()
        _compare(opt_gpu, opt_cpu, dtype, f"{case.id} {layout} step {step + 1}")


@gpu
@needs_gpu
@pytest.mark.parametrize("case", [c for c in GPU_CASES if c.id in (
    "adam-wd", "lamb-wd", "adafactor-wd", "ftrl", "sgd-momentum-wd")], ids=repr)
def test_fused_regularization_matches_the_cpu_engine(case):
    shapes = _shapes(case, "list")
    params = registry.make_arrays(shapes, np.float32, np.random.default_rng(3))
    grads = registry.grad_sequence(shapes, np.float32, seed=5)
    reg = {"l1": 1e-3, "l2": 2e-3, "proximal_l1": 1e-2}
    opt_cpu = case.make(registry.copies(params), **reg)
    opt_gpu = case.make([to_device(p) for p in params], **reg)
    for step, gs in enumerate(grads):
        opt_cpu.step(gs)
        opt_gpu.step([to_device(g) for g in gs])
        synchronize()
        _compare(opt_gpu, opt_cpu, np.float32, f"{case.id} regularized step {step + 1}")


@gpu
@needs_gpu
def test_launch_splits_and_unaligned_tensors_match_the_cpu_engine():
    """More tensors than one launch carries, a tensor cut across launches
    (more chunks than blocks per launch), and views that are not 16-byte
    aligned (the scalar path), for the elementwise kernel and both Lamb passes."""
    if BACKEND != "torch":
        pytest.skip("needs PyTorch views")
    import torch

    rng = np.random.default_rng(1)
    sizes = [int(s) for s in rng.integers(1, 3000, 600)] + [321 * 65536 + 5, 17]
    for rule in ("adam", "lamb"):
        params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
        grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
        cpu = [registry.copies(params), [np.zeros_like(p) for p in params],
               [np.zeros_like(p) for p in params]]
        # Odd tensors start one element into a buffer: 4-byte, not 16-byte, aligned.
        def device(a, i):
            if i % 2:
                base = torch.zeros(a.size + 1, dtype=torch.float32, device="cuda")
                view = base[1:]
                view.copy_(torch.from_numpy(a))
                return view
            return torch.from_numpy(a).cuda()

        gpu_p = [device(p, i) for i, p in enumerate(params)]
        gpu_m = [device(np.zeros_like(p), i) for i, p in enumerate(params)]
        gpu_v = [device(np.zeros_like(p), i) for i, p in enumerate(params)]
        gpu_g = [device(g, i) for i, g in enumerate(grads)]
        for step in range(1, 4):
            fusedopt.ops.apply(rule, cpu[0], grads, cpu[1:], learning_rate=0.01, step=step,
                               weight_decay=0.01)
            fusedopt.ops.apply(rule, gpu_p, gpu_g, [gpu_m, gpu_v], learning_rate=0.01, step=step,
                               weight_decay=0.01)
            synchronize()
            for name, g_list, c_list in (("params", gpu_p, cpu[0]), ("momentum", gpu_m, cpu[1]),
                                         ("velocity", gpu_v, cpu[2])):
                assert_lists_close([to_host(x) for x in g_list], c_list, np.float32,
                                   f"{rule} step {step}: {name}")


@gpu
@needs_gpu
@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
@pytest.mark.parametrize("rule", ["adam", "sgd_momentum", "lamb", "adafactor"])
def test_half_storage_computes_in_float32(rule, storage):
    """float16/bfloat16 storage, float32 math: one step equals the CPU engine's
    float32 step on the same (exactly representable) values, rounded once."""
    if BACKEND != "torch":
        pytest.skip("needs PyTorch for bfloat16")
    import torch

    tdtype = getattr(torch, storage)
    rng = np.random.default_rng(2)
    shapes = [(33, 17), (4097,), (3,)]
    params32 = [torch.from_numpy(rng.standard_normal(s).astype(np.float32)).to(tdtype).float()
                for s in shapes]
    grads32 = [torch.from_numpy(rng.standard_normal(s).astype(np.float32)).to(tdtype).float()
               for s in shapes]
    names = fusedopt.ops.RULES[rule]["states"]

    def states_like(ps, make):
        if rule == "adafactor":
            return [[make(p.shape[:-1] if p.dim() >= 2 else ()) for p in ps],
                    [make(p.shape[:-2] + p.shape[-1:] if p.dim() >= 2 else ()) for p in ps],
                    [make(p.shape) for p in ps]]
        return [[make(p.shape) for p in ps] for _ in names]

    cpu_p = [p.numpy().copy() for p in params32]
    cpu_s = states_like(params32, lambda s: np.zeros(tuple(s), np.float32))
    gpu_p = [p.to(tdtype).cuda() for p in params32]
    gpu_s = states_like(params32, lambda s: torch.zeros(tuple(s), dtype=tdtype, device="cuda"))
    kwargs = dict(learning_rate=0.01, step=1, weight_decay=0.01)
    fusedopt.ops.apply(rule, cpu_p, [g.numpy() for g in grads32], cpu_s, **kwargs)
    fusedopt.ops.apply(rule, gpu_p, [g.to(tdtype).cuda() for g in grads32], gpu_s, **kwargs)
    synchronize()
    tol = {"float16": 1e-3, "bfloat16": 8e-3}[storage]
    for i, (g, c) in enumerate(zip(gpu_p, cpu_p)):
        expected = torch.from_numpy(c).to(tdtype).float().numpy()
        np.testing.assert_allclose(g.float().cpu().numpy(), expected, rtol=tol, atol=tol,
                                   err_msg=f"{rule} {storage} params[{i}]")


DROPOUT_SIZES = [1, 63, 64, 65, 1000, 70_001]


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("size", DROPOUT_SIZES)
def test_dropout_masks_are_bitwise_the_cpu_engines(size, rate, dtype):
    x = np.random.default_rng(size).standard_normal(size).astype(dtype)
    for seed in (7, (123, 456), (-5, 2**40)):
        y_cpu, mask_cpu = fusedopt.ops.dropout(x, rate, seed=seed)
        y_gpu, mask_gpu = fusedopt.ops.dropout(to_device(x), rate, seed=seed)
        registry.assert_same_bits(to_host(mask_gpu), mask_cpu, f"mask size {size} seed {seed}")
        registry.assert_same_bits(to_host(y_gpu), y_cpu, f"y size {size} seed {seed}")
        dy = np.random.default_rng(1).standard_normal(size).astype(dtype)
        dx_cpu = fusedopt.ops.dropout_backward(dy, mask_cpu, rate)
        dx_mask = fusedopt.ops.dropout_backward(to_device(dy), mask_gpu, rate)
        dx_seed = fusedopt.ops.dropout_backward(to_device(dy), None, rate, seed=seed)
        registry.assert_same_bits(to_host(dx_mask), dx_cpu, "dx from the mask")
        registry.assert_same_bits(to_host(dx_seed), dx_cpu, "dx from the seed")


@gpu
@needs_gpu
@pytest.mark.parametrize("shape,noise_shape", [
    ((4, 5, 6), (4, 1, 6)), ((4, 5, 6), (1, 5, 1)), ((64, 130), (1, 130)), ((3, 1, 7), (3, 1, 1)),
])
def test_dropout_noise_shapes_are_bitwise_the_cpu_engines(shape, noise_shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y_cpu, mask_cpu = fusedopt.ops.dropout(x, 0.4, seed=3, noise_shape=noise_shape)
    y_gpu, mask_gpu = fusedopt.ops.dropout(to_device(x), 0.4, seed=3, noise_shape=noise_shape)
    registry.assert_same_bits(to_host(mask_gpu), mask_cpu, "mask")
    registry.assert_same_bits(to_host(y_gpu), y_cpu, "y")
    dx = fusedopt.ops.dropout_backward(to_device(x), None, 0.4, seed=3, noise_shape=noise_shape)
    registry.assert_same_bits(to_host(dx), fusedopt.ops.dropout_backward(
        x, mask_cpu, 0.4, noise_shape=noise_shape), "dx")


@gpu
@needs_gpu
def test_regularizers_match_the_cpu_engine():
    R = fusedopt.regularizers
    rng = np.random.default_rng(4)
    shapes = [(5,), (300, 301), (70_001,)]
    w = registry.make_arrays(shapes, np.float32, rng)
    w0 = [None, *registry.make_arrays(shapes[1:], np.float32, rng)]
    g = registry.make_arrays(shapes, np.float32, rng)
    dw, dw0, dg = [to_device(a) for a in w], [to_device(a) for a in w0], [to_device(a) for a in g]
    np.testing.assert_allclose(R.l1l2_penalty(dw, 0.1, 0.2), R.l1l2_penalty(w, 0.1, 0.2), rtol=1e-12)
    np.testing.assert_allclose(R.l2sp_penalty(dw, dw0, 0.3, 0.4), R.l2sp_penalty(w, w0, 0.3, 0.4),
                               rtol=1e-12)
    assert_lists_close([to_host(a) for a in R.l1l2_gradient(dw, 0.1, 0.2)],
                       R.l1l2_gradient(w, 0.1, 0.2), np.float32, "l1l2_gradient")
    assert_lists_close([to_host(a) for a in R.l2sp_gradient(dw, dw0, 0.3, 0.4)],
                       R.l2sp_gradient(w, w0, 0.3, 0.4), np.float32, "l2sp_gradient")
    R.proximal_step_(dw, dg, 0.1, 0.5, 0.2)
    R.proximal_step_(w, g, 0.1, 0.5, 0.2)
    synchronize()
    assert_lists_close([to_host(a) for a in dw], w, np.float32, "proximal_step_")


@gpu
@needs_gpu
def test_bad_cuda_input_raises_naming_the_argument_and_changes_nothing():
    p = to_device(np.ones((4, 3), np.float32))
    m, v = to_device(np.zeros((4, 3), np.float32)), to_device(np.zeros((4, 3), np.float32))
    g = to_device(np.ones((4, 3), np.float32))
    F = fusedopt.ops
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype float64 but params\[0\]"):
        F.adam_([p], [to_device(np.ones((4, 3)))], [m], [v], learning_rate=0.1)
    with pytest.raises(ValueError, match=r"grads\[0\] has shape \(3, 4\)"):
        F.adam_([p], [to_device(np.ones((3, 4), np.float32))], [m], [v], learning_rate=0.1)
    with pytest.raises(ValueError, match=r"shares memory with"):
        F.adam_([p], [g], [m], [p], learning_rate=0.1)
    with pytest.raises(ValueError, match=r"beta_1"):
        F.adam_([p], [g], [m], [v], learning_rate=0.1, beta_1=1.5)
    with pytest.raises(TypeError, match=r"grads\[0\] is a CPU array but params\[0\] is a CUDA"):
        F.adam_([p], [np.ones((4, 3), np.float32)], [m], [v], learning_rate=0.1)
    if BACKEND == "torch":
        with pytest.raises(ValueError, match=r"params\[0\] must be C-contiguous"):
            F.sgd_([p.t()], [g.t().contiguous()], learning_rate=0.1)
    synchronize()
    assert np.all(to_host(p) == 1) and np.all(to_host(m) == 0) and np.all(to_host(v) == 0)
    with pytest.raises(TypeError, match="Muon does not support"):
        fusedopt.Muon([p])


@gpu
@needs_gpu
def test_optimizer_state_dict_and_clipping_on_cuda():
    rng = np.random.default_rng(9)
    params = registry.make_arrays([(7,), (4, 8)], np.float32, rng)
    grads = registry.grad_sequence([(7,), (4, 8)], np.float32, seed=2, steps=3)
    kwargs = dict(learning_rate=0.01, clipnorm=0.5, clipvalue=0.8, weight_decay=0.01)
    cpu = fusedopt.Adam(registry.copies(params), **kwargs)
    dev = fusedopt.Adam([to_device(p) for p in params], **kwargs)
    for gs in grads:
        cpu.step(gs)
        dev.step([to_device(g) for g in gs])
    synchronize()
    _compare(dev, cpu, np.float32, "clipped Adam")
    state = dev.state_dict()
    fresh = fusedopt.Adam([to_device(p) for p in params], **kwargs)
    fresh.load_state_dict(state)
    back = fusedopt.Adam(registry.copies(params), **kwargs)
    back.load_state_dict(state)  # CUDA state into a CPU optimizer
    for name in cpu.slots:
        assert_lists_close([to_host(s) for s in fresh.slots[name]], cpu.slots[name], np.float32, name)
        assert_lists_close(back.slots[name], cpu.slots[name], np.float32, name)


@gpu
@needs_gpu
def test_runs_on_the_current_torch_stream():
    if BACKEND != "torch":
        pytest.skip("needs PyTorch streams")
    import torch

    x = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        p = torch.from_numpy(x).to("cuda", non_blocking=False)
        g = torch.ones_like(p)
        fusedopt.ops.sgd_([p], [g], learning_rate=0.5)
        result = p.cpu()  # ordered after the update on the same stream
    np.testing.assert_array_equal(result.numpy(), x - np.float32(0.5))
