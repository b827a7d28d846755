"""The built wheel carries the pipelines, the components with their compiled YAML, and placement; installed
into a fresh environment, they compile and load from any folder, without the source tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from crossdistill import components

ROOT = Path(__file__).resolve().parents[1]
# What a wheel is built from (pyproject's package-dir mapping): copied, so the build leaves nothing here.
SOURCES = ("pyproject.toml", "README.md", "src", "pipelines", "components", "images")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, tree / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(tree)], check=True, capture_output=True, text=True)
    [built] = out.glob("crossdistill-*.whl")
    return built


def _python_packages(root: Path, package: str) -> set[str]:
    """Every .py file under ``root`` as the path it has inside the wheel (``package/...``)."""
    return {f"{package}/{p.relative_to(root).as_posix()}" for p in root.rglob("*.py") if "__pycache__" not in p.parts}


def test_wheel_holds_the_pipelines_components_and_their_compiled_yaml(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    # Every module of the library, the pipelines and the components (a new folder missing from
    # pyproject's [tool.setuptools] packages list fails here).
    expected = (_python_packages(ROOT / "src" / "crossdistill", "crossdistill")
                | _python_packages(ROOT / "pipelines", "crossdistill/pipelines")
                | _python_packages(ROOT / "components", "crossdistill/components"))
    assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"
    assert "crossdistill/pipelines/placement.py" in names
    for name, (folder, _) in components.COMPONENTS.items():
        for file in ("component.yaml", "README.md"):
            assert f"crossdistill/components/{folder}/{file}" in names, f"{name}: {file} not shipped"
    for compiled in (ROOT / "pipelines" / "compiled").glob("*.yaml"):
        assert f"crossdistill/pipelines/compiled/{compiled.name}" in names
    assert not [n for n in names if n.startswith(("tests/", "pipelines/", "components/"))]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel installed; its dependencies come from this environment's
    site-packages through a path entry (which runs none of its .pth files, so not the editable install)."""
    env = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True, text=True)
    site = Path(subprocess.run([str(env / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps-from-the-test-env.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return env


def test_installed_package_compiles_and_loads_components_from_any_folder(installed, tmp_path):
    script = textwrap.dedent("""
        import json
        from pathlib import Path
        from kfp.components import load_component_from_file
        from crossdistill import components
        from crossdistill.pipelines import placement
        from crossdistill.pipelines.compile import compile_pipeline

        where = {m.__name__: m.__file__ for m in (components, placement)}
        loaded = [load_component_from_file(str(components.yaml_path(n))).name for n in components.COMPONENTS]
        out = compile_pipeline("offline", Path("offline.yaml"), placement.Placement.cpu_only())
        print(json.dumps({"where": where, "loaded": loaded, "compiled": out.stat().st_size}))
    """)
    work = tmp_path / "anywhere"
    work.mkdir()
    run = subprocess.run([str(installed / "bin" / "python"), "-c", script], cwd=work, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    import json

    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert all(str(installed) in path and str(ROOT) not in path for path in result["where"].values()), result
    assert result["loaded"] == list(components.COMPONENTS) and result["compiled"] > 10_000
    # The console script too: pipelines go to ./compiled, the shipped components are left as they are.
    cli = subprocess.run([str(installed / "bin" / "crossdistill"), "pipeline", "compile", "online"], cwd=work,
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert (work / "compiled" / "online-distillation.yaml").is_file()
    assert "compiled in the installed package" in cli.stdout
