"""The layers of the tree: which package may import which, read from the source (every import,
also inside functions), and the SDK imported for real with everything above it blocked."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> (its directory, the packages of this project it may import)
LAYERS = {
    "sam2_triton": ("client/sam2_triton", set()),
    "sam2_triton_server": ("server/sam2_triton_server", {"sam2_triton"}),
    "sam2_triton_serve": ("serve/sam2_triton_serve", {"sam2_triton"}),
    # export installs into a model repository, whose configs serve/repository.py defines
    "sam2_triton_export": ("export/sam2_triton_export", {"sam2_triton", "sam2_triton_serve"}),
    # bench also measures the server's video store in-process (bytes held over 2000 frames)
    "sam2_triton_bench": (
        "bench/sam2_triton_bench",
        {"sam2_triton", "sam2_triton_serve", "sam2_triton_export", "sam2_triton_server"},
    ),
    "sam2_triton_app": (
        "app/sam2_triton_app",
        {"sam2_triton", "sam2_triton_serve", "sam2_triton_export", "sam2_triton_bench"},
    ),
}
OURS = set(LAYERS)


def imports(path: Path) -> list[tuple[int, str]]:
    """Absolute module names imported anywhere in ``path`` (line, module); relative ones skipped."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def sources(package: str) -> list[Path]:
    files = sorted((ROOT / LAYERS[package][0]).rglob("*.py"))
    assert files, f"no sources for {package}"
    return files


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_package_imports_only_the_layers_below(package: str) -> None:
    allowed = LAYERS[package][1] | {package}
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sources(package)
        for line, name in imports(path)
        if name.split(".")[0] in OURS - allowed
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", sorted(OURS - {"sam2_triton"}))
def test_no_private_sdk_module_is_used_outside_the_sdk(package: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sources(package)
        for line, name in imports(path)
        if name.startswith("sam2_triton.") and any(p.startswith("_") for p in name.split(".")[1:])
    ]
    assert not bad, "\n".join(bad)


def test_the_layer_rules_see_a_violation(tmp_path: Path) -> None:
    """The checker itself: an import inside a function is found."""
    f = tmp_path / "m.py"
    f.write_text(
        "def f():\n    from sam2_triton_export import main\n    import sam2_triton._wire\n"
    )
    names = [n for _, n in imports(f)]
    assert "sam2_triton_export" in names and "sam2_triton._wire" in names


_BLOCKED_IMPORT = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # any import of these raises ImportError
import importlib, pkgutil, sam2_triton
names = [m.name for m in pkgutil.iter_modules(sam2_triton.__path__, "sam2_triton.")]
for name in names:
    importlib.import_module(name)
from sam2_triton import SAM2Client, AsyncSAM2Client, SAM2ImagePredictor
print(len(names), "modules")
"""


def test_sdk_imports_with_every_other_package_and_torch_blocked() -> None:
    blocked = sorted(OURS - {"sam2_triton"}) + ["torch", "torchvision", "sam2", "onnxruntime"]
    code = _BLOCKED_IMPORT.format(blocked=blocked)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[0]) >= 10  # every module of the SDK was imported


def test_sdk_distribution_declares_only_numpy_pillow_tritonclient_pycocotools_and_av() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    names = sorted(
        d.split("[")[0].split(">")[0].split("=")[0].strip() for d in project["dependencies"]
    )
    assert names == ["numpy", "pillow", "pycocotools", "tritonclient"]
    # video files need PyAV, an opt-in extra (JPEG folders and arrays need nothing more)
    extras = project.get("optional-dependencies", {})
    assert set(extras) == {"video"}
    assert [d.split(">")[0] for d in extras["video"]] == ["av"]
