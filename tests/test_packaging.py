"""The built wheel installs on its own and every module in it imports."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_and_every_module_imports(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), str(ROOT)],
        check=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("repotune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = sorted(
        name[: -len(".py")].replace("/", ".").removesuffix(".__init__")
        for name in names
        if name.endswith(".py") and name != "repotune/__main__.py"  # __main__ runs the CLI when imported
    )
    assert all(module.startswith("repotune") for module in modules), modules
    assert "repotune.cli" in modules and "repotune.clean.stage" in modules
    assert "repotune/configs/tiny-cpu.yaml" in names  # recipes ship with the package
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
    )
    # Dependencies come from this environment; the package itself only from the installed wheel.
    script = (
        "import importlib, sys\n"
        f"sys.path.insert(0, {str(target)!r})\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(target)!r}), module.__file__\n"
        "print('imported', len(sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (target / "bin" / "repotune").exists()
