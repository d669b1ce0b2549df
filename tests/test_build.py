"""Building and not building: setup.py outside the pinned environment, and the package without
its compiled extension (it runs the torch backend and says how to build the rest)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_setup_without_torch_says_how_to_build():
    # pip's default isolated build hides the user's torch; the extension must be built against
    # that torch, so setup.py stops with the command that does so (the one the README gives).
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--version']; __file__ = 'setup.py'; "
            "exec(compile(open('setup.py').read(), 'setup.py', 'exec'))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0
    assert "pip install --no-build-isolation ." in r.stderr, r.stderr
    assert "pip install --no-build-isolation ." in (ROOT / "README.md").read_text()


_NO_EXTENSION = r"""
import sys
sys.modules["ct_kernels._C"] = None  # as if the extension had not been built
import torch, ct_kernels as ct
z, y = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
assert ct.backend_for("cpu") == "torch", ct.backend_for("cpu")
assert ct.available_backends()["native"] != "ok"
ref = ct.supcon_loss(z, y, 0.5, backend="torch")
assert torch.equal(ct.supcon_loss(z, y, 0.5), ref)  # auto runs the torch backend
for call in (lambda: ct.supcon_loss(z, y, 0.5, backend="native"),
             lambda: ct.patch_labels(torch.zeros(1, 4, 4, dtype=torch.long), 2, 3, backend="native")):
    try:
        call()
    except RuntimeError as e:
        print(e)
    else:
        raise SystemExit("backend='native' without the extension did not raise")
"""


def test_runs_without_the_extension_and_says_how_to_build_it():
    r = subprocess.run([sys.executable, "-c", _NO_EXTENSION], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert "ct_kernels._C" in line and "pip install --no-build-isolation -e ." in line, line


def test_source_distribution_holds_every_source_file(tmp_path):
    # An sdist built on a machine without nvcc must still carry the CUDA sources, and every
    # header (setuptools packs only the extension's compiled sources unless MANIFEST.in says so).
    import tarfile
    for name in ("setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    for name in ("csrc", "ct_kernels"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=skip)
    env = {**__import__("os").environ, "CT_KERNELS_BUILD_CUDA": "0"}
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", "dist"], cwd=tmp_path,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    (archive,) = (tmp_path / "dist").glob("ct_kernels-*.tar.gz")
    with tarfile.open(archive) as tar:
        packed = {Path(*Path(m).parts[1:]).as_posix() for m in tar.getnames()}
    wanted = {p.relative_to(tmp_path).as_posix() for d in ("csrc", "ct_kernels") for p in (tmp_path / d).rglob("*")
              if p.is_file()}
    assert any(w.endswith(".cu") for w in wanted) and any(w.endswith(".cuh") for w in wanted)
    assert wanted - packed == set()


_CROSS_CXX = "aarch64-linux-gnu-g++"


# setup.py run as far as setup(), which prints its extensions as JSON instead of building them;
# argv[1], where given, is the platform setup.py is told it runs on.
_SETUP_EXTENSIONS = r"""
import json, sys, setuptools, torch
if len(sys.argv) > 1:
    # it reads sysconfig, keyed by the real platform; imported here, not before setup.py on the
    # real one, where setup.py must first point CUDA_HOME at the toolkit it finds
    import torch.utils.cpp_extension  # noqa: F401
    sys.platform = sys.argv[1]
setuptools.setup = lambda **kw: print("EXT", json.dumps([
    dict(name=e.name, sources=e.sources, include_dirs=e.include_dirs, macros=e.define_macros,
         cxx=e.extra_compile_args["cxx"]) for e in kw["ext_modules"]]))
sys.argv = ["setup.py", "--version"]
__file__ = "setup.py"
exec(compile(open("setup.py").read(), "setup.py", "exec"))
"""


def _setup_extensions(env: dict, *platform: str) -> tuple[list[dict], str]:
    """(the extensions setup.py would build under these environment variables, its stdout)."""
    import json
    import os
    r = subprocess.run([sys.executable, "-c", _SETUP_EXTENSIONS, *platform], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, **env})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.split("EXT ", 1)[1]), r.stdout


@pytest.mark.skipif(shutil.which(_CROSS_CXX) is None,
                    reason=f"needs the {_CROSS_CXX} cross compiler (Debian: g++-aarch64-linux-gnu; .ci/run installs it)")
def test_host_sources_compile_for_aarch64():
    # The C++ half of the extension is built on every machine, Grace Hopper's aarch64 host too:
    # the x86-64 paths (AVX intrinsics, target_clones of the row loops) must stay behind their
    # guards there. A target_clones("arch=x86-64-v4") outside them stopped the build on aarch64.
    # Every .cpp of the extension setup.py builds here (with CUDA: the host files of the CUDA ops
    # too), with its include directories and macros; device code (.cu) is nvcc's.
    import sysconfig
    from concurrent.futures import ThreadPoolExecutor
    # CT_KERNELS_BUILD_CUDA=1: the CUDA host files too, where nvcc is found
    (ext,), _ = _setup_extensions({"CT_KERNELS_BUILD_CUDA": "1", "CT_KERNELS_BUILD_EXT": ""})
    sources = [src for src in ext["sources"] if src.endswith(".cpp")]
    assert "csrc/cpu/row_loops.cpp" in sources
    flags = (["-std=c++20", "-O0", "-fPIC", "-c", "-o", "/dev/null", "-DTORCH_EXTENSION_NAME=_C"] + ext["cxx"]
             + [f"-D{name}={value}" for name, value in ext["macros"]]
             + [f"-I{d}" for d in ext["include_dirs"] + [sysconfig.get_paths()["include"]]])

    def compile_one(src):
        r = subprocess.run([_CROSS_CXX, *flags, src], cwd=ROOT, capture_output=True, text=True)
        return src, r.returncode, r.stderr[-2000:]

    with ThreadPoolExecutor(2) as pool:
        failed = [(name, err) for name, rc, err in pool.map(compile_one, sources) if rc != 0]
    assert not failed, failed


@pytest.mark.parametrize("platform,flag,built", [("linux", "", True), ("darwin", "", False),
                                                  ("darwin", "1", True), ("linux", "0", False)])
def test_extension_is_built_on_linux_or_when_asked(platform, flag, built):
    # Its C++ needs GCC / Clang attributes and OpenMP: on macOS (Apple's clang has no -fopenmp) or
    # Windows the build failed and so did the install; there the package installs without it.
    exts, out = _setup_extensions({"CT_KERNELS_BUILD_EXT": flag, "CT_KERNELS_BUILD_CUDA": "0"}, platform)
    assert [e["name"] for e in exts] == (["ct_kernels._C"] if built else []), out
    if not built:
        assert "ct_kernels._C: False" in out
