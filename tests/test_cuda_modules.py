"""The lazily compiled kernel modules on the CPU, with stand-ins for CuPy and NVRTC: what each compiles, which name
it looks a kernel up by, and that kernels and cubins are cached; and the loader of the cuBLAS libraries."""
from __future__ import annotations

import sys
import types

import pytest

import autograd.cuda._common as common
import autograd.cuda.wgmma as wgmma


class _FakeCupy:
    def __init__(self):
        self.modules = []
        fake = self

        class RawModule:
            def __init__(self, **kw):
                self.kw = kw
                self.looked_up = []
                fake.modules.append(self)

            def get_function(self, name):
                self.looked_up.append(name)
                return ("kernel", name)
        self.RawModule = RawModule


def test_lazy_module_compiles_once_and_looks_up_name_expressions(monkeypatch):
    cp = _FakeCupy()
    monkeypatch.setattr(common, "require_cupy", lambda: cp)
    mod = common.LazyModule("// src", {"k": ["float", "double"]})
    assert cp.modules == []                                   # nothing compiled before the first kernel
    assert mod.kernel("k", "float") == ("kernel", "k<float>")
    assert mod.kernel("k", "float") is mod.kernel("k", "float")
    mod.kernel("k", "double")
    (m,) = cp.modules
    assert m.kw["code"].endswith("// src") and m.kw["name_expressions"] == ["k<float>", "k<double>"]
    assert m.looked_up == ["k<float>", "k<double>"]


def test_sm90a_module_loads_a_cached_cubin_by_lowered_names(monkeypatch, tmp_path):
    cp = _FakeCupy()
    monkeypatch.setattr(wgmma, "require_cupy", lambda: cp)
    monkeypatch.setattr(wgmma.tempfile, "gettempdir", lambda: str(tmp_path))
    compiled = []
    nvrtc = types.SimpleNamespace(
        NVRTCError=RuntimeError, getVersion=lambda: (13, 0),
        createProgram=lambda src, name, h, i: {"names": []},
        addNameExpression=lambda prog, n: prog["names"].append(n),
        compileProgram=lambda prog, opts: compiled.append(opts),
        getLoweredName=lambda prog, n: "_Z" + n.replace("<", "I").replace(">", "E"),
        getCUBIN=lambda prog: b"cubin", getProgramLog=lambda prog: "", destroyProgram=lambda prog: None)
    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.nvrtc = nvrtc
    for name, mod in (("cupy_backends", types.ModuleType("cupy_backends")),
                      ("cupy_backends.cuda", types.ModuleType("cupy_backends.cuda")),
                      ("cupy_backends.cuda.libs", libs), ("cupy_backends.cuda.libs.nvrtc", nvrtc)):
        monkeypatch.setitem(sys.modules, name, mod)
    for _ in range(2):   # the second module finds the first one's cubin on disk
        mod = wgmma.Sm90aModule("// src", {"k": ["64,true"]})
        assert mod.kernel("k", "64,true") == ("kernel", "_ZkI64,trueE")   # the lowered name, not the expression
    assert len(compiled) == 1 and "-arch=sm_90a" in compiled[0]
    assert [m.kw for m in cp.modules] == [{"path": cp.modules[0].kw["path"]}] * 2
    assert cp.modules[0].kw["path"].endswith(".cubin")


def test_library_loader_takes_the_first_that_loads_and_names_all_it_tried():
    from autograd.cuda.cublas import CublasError, load_first
    lib, name = load_first(["/nonexistent/libcublasLt.so.99", "libc.so.6"], "libc")
    assert name == "libc.so.6" and lib is not None
    with pytest.raises(CublasError, match=r"could not load libcublasLt \(tried .*/nonexistent/a\.so.*/nonexistent/b\.so"):
        load_first(["/nonexistent/a.so", "/nonexistent/b.so"], "libcublasLt")


def test_warpgroup_launches_fit_the_blocks_per_sm_they_are_built_for():
    """The sm_90a backward is compiled for MINB blocks per SM (its register budget); its shared memory (plus the 1 KB
    the driver reserves per block) must let that many in, or the register budget buys nothing (H100/H200: 228 KB an
    SM, 227 KB a block)."""
    from autograd.cuda import flash_attention as fa
    for D, minbs in fa._WG_BWD.items():
        for minb in minbs:
            if minb is not None:
                assert minb * (fa._wg_bwd_smem(D) + 1024) <= 228 * 1024, (D, minb, fa._wg_bwd_smem(D))
    for D, (bn, nwg) in fa._WG_FWD.items():
        assert fa._wg_fwd_smem(D, bn, nwg) <= 227 * 1024
    assert fa._wg_bwd_smem(64) % 16 == 0   # the mbarriers after dQ's tile stay 8-byte aligned
