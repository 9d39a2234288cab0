"""The layout: imports go one way, and the production image ships no tooling.

    scripts/, tests/ → devstack/ → jobs/, actors/, serve_apps/ → k8scost/
    exporter/ → k8scost.settings only (devstack and the tests may import the exporter)

Read from the source with ``ast``, nothing imported: every ``import`` and ``from … import``
anywhere in a file (inside functions too), relative ones resolved, and every module a
list literal runs with ``"-m", "<module>"`` (a subprocess is a dependency too).
"""

from __future__ import annotations

import ast
import fnmatch
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Every top-level folder holding Python, and what it is.
PRODUCTION = ("k8scost", "exporter", "serve_apps", "actors", "jobs")
TOOLING = ("devstack", "tests", "scripts")
SKIPPED_DIRS = {".git", ".venv", ".data", "node_modules", "__pycache__", "build", "dist", "artifacts"}

# Who may not import whom (top-level owners; scripts' own modules count as "scripts").
FORBIDDEN = {
    "k8scost": {"jobs", "actors", "serve_apps", "devstack", "exporter", "tests", "scripts"},
    "exporter": {"k8scost", "serve_apps", "actors", "jobs", "devstack", "tests", "scripts"},
    "jobs": {"devstack", "tests", "scripts"},
    "actors": {"devstack", "tests", "scripts"},
    "serve_apps": {"devstack", "tests", "scripts"},
    "devstack": {"tests", "scripts"},
    "tests": set(),
    "scripts": set(),
}


def exporter_may_import(module: str) -> bool:
    """The one exception: the exporter runs in the customer's cluster from an image holding only
    exporter/ and k8scost/{__init__,settings}.py (cluster_config/customer/Dockerfile), since its
    settings are declared with everyone's in k8scost/settings.py, which imports nothing of ours."""
    return module in ("k8scost", "k8scost.settings") or module.startswith("k8scost.settings.")


def top_folders() -> list[Path]:
    return sorted(d for d in ROOT.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in SKIPPED_DIRS)


def python_files(top: str) -> list[Path]:
    base = ROOT / top
    return sorted(p for p in base.rglob("*.py") if not SKIPPED_DIRS & set(p.relative_to(ROOT).parts))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted module) for everything ``path`` imports or runs with ``-m``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: level 1 is this package, 2 its parent, ...
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # `from k8scost import ledger` imports k8scost.ledger
                if alias.name != "*":
                    yield node.lineno, f"{module}.{alias.name}"
        elif isinstance(node, ast.List | ast.Tuple):
            items = [e.value if isinstance(e, ast.Constant) and isinstance(e.value, str) else None for e in node.elts]
            for flag, target in zip(items, items[1:]):
                if flag == "-m" and target:
                    yield node.lineno, target


def script_modules() -> set[str]:
    return {p.stem for p in (ROOT / "scripts").glob("*.py")}


def owner_of(module: str) -> str | None:
    """The top-level part of the tree ``module`` belongs to; None for the standard library and third parties."""
    top = module.split(".")[0]
    if top in PRODUCTION or top in TOOLING:
        return top
    if top in script_modules():
        return "scripts"
    return None


def violations() -> list[str]:
    found: dict[tuple[str, int], str] = {}  # one per import statement: its shortest offending name
    for source, forbidden in FORBIDDEN.items():
        for path in python_files(source):
            for line, module in imported_modules(path):
                target = owner_of(module)
                if target is None or target == source:
                    continue
                if source == "exporter" and target == "k8scost" and exporter_may_import(module):
                    continue
                if target in forbidden:
                    key = (str(path.relative_to(ROOT)), line)
                    if key not in found or len(module) < len(found[key]):
                        found[key] = module
    return [f"{file}:{line}: {file.split('/')[0]} imports {module}" for (file, line), module in sorted(found.items())]


def test_every_python_folder_is_placed() -> None:
    """A new top-level package must be given its place in the direction above."""
    tops = {folder.name for folder in top_folders() if python_files(folder.name)}
    assert tops <= set(FORBIDDEN), f"unplaced top-level folders: {sorted(tops - set(FORBIDDEN))}"
    assert set(PRODUCTION) | {"devstack", "tests", "scripts"} <= tops


def test_imports_go_one_way() -> None:
    found = violations()
    assert not found, "imports against the direction:\n" + "\n".join(found)


def test_the_exporter_settings_import_nothing_of_ours() -> None:
    """The exporter image copies k8scost/__init__.py and settings.py alone: they must stand alone."""
    for name in ("__init__.py", "settings.py"):
        ours = [module for _, module in imported_modules(ROOT / "k8scost" / name) if owner_of(module)]
        assert ours == [], f"k8scost/{name} imports {ours}"
    copied = (ROOT / "cluster_config" / "customer" / "Dockerfile").read_text()
    assert "COPY k8scost/__init__.py k8scost/settings.py k8scost/" in copied


def test_the_checks_catch_a_wrong_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules fire: a fake tree whose every layer imports the one it must not."""
    bad = {
        "k8scost/bad.py": "from serve_apps.ingress import app\n",
        "k8scost/stores/bad.py": "import devstack.stack as stack\n",
        "exporter/bad.py": "import k8scost.ledger\n",
        "actors/bad.py": "def f():\n    from devstack.simulator import spec\n",  # inside a function
        "jobs/bad.py": "import subprocess\nsubprocess.run(['python', '-m', 'devstack.simulator'])\n",
        "serve_apps/bad.py": "from tests import helpers\n",
        "devstack/bad.py": "import demo\n",  # scripts/demo.py
        "scripts/demo.py": "",
        "exporter/ok.py": "from k8scost.settings import ExporterSettings\n",
        "tests/ok.py": "from devstack import stack\nfrom serve_apps.ingress.remote_write import encode\n",
        "devstack/ok.py": "from exporter.snapshot import Snapshot\nfrom serve_apps.ingress.remote_write import encode\n",
    }
    for name, text in bad.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    found = sorted({line.split(":")[0] for line in violations()})
    assert found == sorted(name for name in bad if name.endswith("bad.py"))


def test_relative_imports_are_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "serve_apps" / "ingress").mkdir(parents=True)
    (tmp_path / "serve_apps" / "ingress" / "app.py").write_text("from .remote_write import encode\nfrom .. import restapi\n")
    (tmp_path / "serve_apps" / "ingress" / "__init__.py").write_text("from . import app\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert {m for _, m in imported_modules(tmp_path / "serve_apps" / "ingress" / "app.py")} == {
        "serve_apps.ingress.remote_write", "serve_apps.ingress.remote_write.encode", "serve_apps", "serve_apps.restapi"}
    assert {m for _, m in imported_modules(tmp_path / "serve_apps" / "ingress" / "__init__.py")} == {
        "serve_apps.ingress", "serve_apps.ingress.app"}


# --- the production image and the installed packages -----------------------------------


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether a .dockerignore with ``patterns`` leaves ``path`` out (the last matching pattern wins)."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        parts = path.split("/")
        # A pattern matching a folder leaves out everything under it.
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def dockerfile_copies(text: str) -> list[str]:
    """The build-context sources of every COPY/ADD (not those of --from stages)."""
    text = re.sub(r"\\\n", " ", text)
    sources = []
    for line in text.splitlines():
        if line.split()[:1] not in (["COPY"], ["ADD"], ["copy"], ["add"]):
            continue
        args = shlex.split(line, comments=True)[1:]
        if any(a.startswith("--from") for a in args):
            continue
        args = [a for a in args if not a.startswith("--")]
        sources += args[:-1]
    return sources


def test_the_image_leaves_the_tooling_out() -> None:
    config = ROOT / "cluster_config"
    patterns = [line.strip() for line in (config / "Dockerfile.dockerignore").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    for tool in TOOLING:
        assert dockerignore_excludes(patterns, f"{tool}/__init__.py"), f"{tool}/ is in the image's build context"
    for package in PRODUCTION:
        assert not dockerignore_excludes(patterns, f"{package}/__init__.py")
    sources = dockerfile_copies((config / "Dockerfile").read_text())
    assert sources, "no COPY in cluster_config/Dockerfile"
    copied = {Path(s).parts[0] if Path(s).parts else "." for s in sources}
    assert not copied & set(TOOLING), f"the image copies {sorted(copied & set(TOOLING))}"
    # Exactly the installed packages, besides the files named one by one.
    assert {c for c in copied if (ROOT / c).is_dir() and c != "cluster_config"} == set(PRODUCTION)


def test_the_checks_read_docker_files_right() -> None:
    assert dockerignore_excludes(["devstack"], "devstack/stack.py")
    assert dockerignore_excludes(["**/devstack/"], "devstack/simulator/spec.py")
    assert not dockerignore_excludes(["devstack", "!devstack"], "devstack/stack.py")
    assert not dockerignore_excludes(["devstack"], "k8scost/settings.py")
    assert not dockerignore_excludes(["**/node_modules"], "devstack/stack.py")
    assert dockerfile_copies("FROM x\nCOPY --chown=1:1 a/ b/ /app/\nCOPY --from=build /x /y\nADD \\\n  c /c\n") == \
        ["a/", "b/", "c"]


def installed_packages() -> list[str]:
    """What ``pip install .`` ships: pyproject's packages.find applied as setuptools does."""
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    include, exclude = find.get("include", ["*"]), find.get("exclude", [])
    packages = sorted(module_name(init) for folder in top_folders() for init in folder.rglob("__init__.py")
                      if not SKIPPED_DIRS & set(init.relative_to(ROOT).parts))
    # setuptools stops at a folder without __init__.py: its subpackages are not found.
    found = [p for p in packages if all(".".join(p.split(".")[:n]) in packages for n in range(1, p.count(".") + 1))]
    return [p for p in found if any(fnmatch.fnmatchcase(p, pattern) for pattern in include)
            and not any(fnmatch.fnmatchcase(p, pattern) for pattern in exclude)]


def test_pip_install_ships_no_tooling() -> None:
    installed = installed_packages()
    assert {p.split(".")[0] for p in installed} == set(PRODUCTION)
    assert "serve_apps.ingress.proto" in installed and "k8scost.stores" in installed
    assert [p for p in installed if p.split(".")[0] in TOOLING] == []
