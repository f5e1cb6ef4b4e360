"""Every CUDA kernel module compiles for Hopper (sm_90, or sm_90a for the warpgroup-product modules) without register
spills, checked with nvcc on a machine that has the CUDA toolkit but no GPU (skipped without nvcc).

The warpgroup forward and backward are also checked for ptxas's serialisation warnings (their overlapped products
depend on none).

The source and the template instantiations are the ones NVRTC compiles at run time (``LazyModule.source`` and
``.names``); a host array of the instantiated kernels' addresses makes nvcc emit each of them. ptxas's report
(``-Xptxas -v``) gives registers and spill bytes per kernel: a spill moves registers to local memory inside the
kernel's loops, so a kernel that spills is treated as broken.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
import shutil
import subprocess

import pytest

import autograd.cuda as cuda_pkg
from autograd.cuda._common import LazyModule
from autograd.cuda.wgmma import Sm90aModule

NVCC = shutil.which("nvcc")
ARCH = "-gencode=arch=compute_90,code=sm_90"
ARCH_A = "-gencode=arch=compute_90a,code=sm_90a"


def _toolchain_works() -> bool:
    """nvcc and its host compiler build a trivial sm_90 kernel here (else the tests skip: no toolkit to test with)."""
    if NVCC is None:
        return False
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        with open(f"{d}/t.cu", "w") as f:
            f.write("__global__ void k(float* x) { x[threadIdx.x] = 1.f; }\n")
        try:
            r = subprocess.run([NVCC, ARCH, "-cubin", "-o", f"{d}/t.cubin", f"{d}/t.cu"], capture_output=True,
                               timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return r.returncode == 0


pytestmark = pytest.mark.skipif(not _toolchain_works(), reason="needs nvcc and a host compiler (the CUDA toolkit)")


def _lazy_modules():
    """(module name, attribute, module) for every LazyModule / Sm90aModule defined in autograd.cuda's modules."""
    found = []
    for info in pkgutil.iter_modules(cuda_pkg.__path__):
        mod = importlib.import_module(f"autograd.cuda.{info.name}")
        for attr, obj in vars(mod).items():
            if isinstance(obj, LazyModule):   # Sm90aModule included
                found.append((info.name, attr, obj))
    return found


MODULES = _lazy_modules()


def test_the_kernel_modules_are_found():
    names = {m for m, _, _ in MODULES}
    assert {"flash_attention", "norms", "softmax", "adamw", "elementwise"} <= names
    assert any(isinstance(m, Sm90aModule) for _, _, m in MODULES)


def _compile(tmp_path, source: str, names: list, arch: str) -> tuple[int, str]:
    """(nvcc's exit status, ptxas's verbose report) for ``source`` with the template instantiations ``names``."""
    cu = tmp_path / "k.cu"
    cu.write_text(source + "\nvoid* __instantiate[] = {" + ", ".join(f"(void*){n}" for n in names) + "};\n")
    r = subprocess.run([NVCC, arch, "-cubin", "-std=c++17", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"),
                        str(cu)], capture_output=True, text=True, timeout=600)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("name,attr,lazy", MODULES, ids=[f"{m}.{a}" for m, a, _ in MODULES])
def test_kernels_compile_for_hopper_without_spills(tmp_path, name, attr, lazy):
    rc, out = _compile(tmp_path, lazy.source, lazy.names, ARCH_A if isinstance(lazy, Sm90aModule) else ARCH)
    assert rc == 0, f"{name}.{attr} does not compile:\n{out[-3000:]}"
    spills, fn = [], None
    for line in out.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            fn = m.group(1)
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and (int(m.group(1)) or int(m.group(2))):
            spills.append(f"{fn}: {line.strip()}")
    assert not spills, f"{name}.{attr}: kernels spill registers:\n" + "\n".join(spills)
    compiled = len(re.findall(r"Compiling entry function", out))
    assert compiled >= len(lazy.names), f"{name}.{attr}: {compiled} kernels compiled of {len(lazy.names)}"


def _ptxas_report(tmp_path, prefix: str) -> str:
    """ptxas's verbose report on the sm_90a flash kernels whose names start with prefix."""
    from autograd.cuda import flash_attention as fa
    names = [n for n in fa._wg_mod.names if n.startswith(prefix)]
    assert names
    rc, out = _compile(tmp_path, fa._wg_mod.source, names, ARCH_A)
    assert rc == 0, out[-3000:]
    return out


def test_hopper_forward_products_are_not_serialised(tmp_path):
    """ptxas keeps the warpgroup forward's products asynchronous: no wait or arrive of its own (C7517 / C7519) and no
    serialisation warning (C751x). The forward's overlap of P V with the next tile's softmax depends on it: a product
    on a branch, or an accumulator read while its product is in flight, makes ptxas serialise them silently."""
    out = _ptxas_report(tmp_path, "flash_fwd_wg")
    warnings = [line.strip() for line in out.splitlines() if re.search(r"\(C751\d\)", line)]
    assert not warnings, "\n".join(warnings)


def test_hopper_backward_products_are_not_serialised(tmp_path):
    """The warpgroup backward's dV/dK product runs on while dQ is added: ptxas must not serialise its products
    (C7515: an accumulator written by other instructions while a product is open, e.g. the next tile's cleared
    accumulators before that product has been waited for). The wait it adds after the first S^T product (C7517 /
    C7519) is known and allowed."""
    out = _ptxas_report(tmp_path, "flash_bwd_wg")
    serialised = [line.strip() for line in out.splitlines() if re.search(r"\(C751[0-6]\)", line)]
    assert not serialised, "\n".join(serialised)
