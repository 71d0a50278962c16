"""What pyproject.toml and constraints.txt promise, checked against the code.

- ``pip install lambda_actors`` is the embeddable runtime alone: its core
  dependencies are exactly what lambda_actors/runtime (and the package root
  that re-exports it) imports, and importing it loads none of the bot's.
- The ``bot`` extra is what the rest of lambda_actors imports; the ``test``
  extra is what tests/ and the loopback harness import, plus the tools the
  suite runs (each named with where it is used).
- Every declared dependency is imported (or run) by the part it serves, and
  every import is declared for the part it is in.
- constraints.txt pins every declared dependency, within what pyproject.toml
  allows, and this environment holds the pinned versions.
- Each core dependency has one floor (``name>=X``), which scripts/test installs
  exactly in .venv-floor to run tests/runtime.
- Every ``type: ignore`` says why beside it.
- The built wheel ships every module and the bot's supervision.toml, and
  requires unconditionally only the core dependencies.

Static checks (files are parsed, not imported) except the fresh-interpreter
import and the wheel build.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

CORE = [Requirement(r) for r in PROJECT["dependencies"]]
EXTRAS = {name: [Requirement(r) for r in reqs] for name, reqs in PROJECT["optional-dependencies"].items()}

# Declared dependencies that serve by being run or loaded rather than imported
# by our code: the distribution, and the file and text that show the use.
USED_WITHOUT_IMPORT = {
    "pytest-trio": ("pyproject.toml", "trio_mode = true"),  # pytest plugin, loaded by entry point
    "mypy": ("scripts/test", "-m mypy"),
    "pytest-xdist": ("scripts/test", '-n "$WORKERS"'),  # pytest plugin, loaded by entry point
    "matrix-synapse": ("lambda_actors/loopback/homeserver.py", '"synapse.app.homeserver"'),  # run as a process
}

# Imports that a declared dependency brings with it and that we use only
# because that dependency needs them: import name -> the declared distribution
# whose own requirements must list it.
PROVIDED_BY = {
    "signedjson": "matrix-synapse",  # the homeserver's signing key, made as Synapse makes it
    "packaging": "pytest",  # this file parses requirements as pip does
}

# Files whose `type: ignore` comments do not yet say why (owners are fixing
# them; shrink this, never grow it).


def _dist_of_import() -> dict[str, set[str]]:
    """Top-level import name -> canonical distribution names that provide it."""
    found: dict[str, set[str]] = {}
    for name, dists in importlib.metadata.packages_distributions().items():
        found.setdefault(name.removesuffix("-stubs"), set()).update(canonicalize_name(d) for d in dists)
    return found


DIST_OF_IMPORT = _dist_of_import()


def _imports_of(dist: str) -> set[str]:
    """The top-level import names a distribution provides (stubs: what they type)."""
    return {name for name, dists in DIST_OF_IMPORT.items() if canonicalize_name(dist) in dists}


def _files(*parts: str) -> list[Path]:
    return sorted(p for part in parts for p in (ROOT / part).rglob("*.py"))


RUNTIME_FILES = [ROOT / "lambda_actors" / "__init__.py", *_files("lambda_actors/runtime")]
LOOPBACK_FILES = _files("lambda_actors/loopback")
BOT_FILES = [p for p in _files("lambda_actors") if p not in RUNTIME_FILES and p not in LOOPBACK_FILES]
TEST_FILES = _files("tests")
LOCAL_TEST_MODULES = {p.stem for p in TEST_FILES} | {p.name for p in (ROOT / "tests").rglob("*") if p.is_dir()}


@functools.cache
def _imports_in(path: Path) -> tuple[tuple[str, int], ...]:
    """Every absolute import in one file (lazy ones too): (top-level module, line)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno))
    return tuple(found)


def _third_party_imports(files: list[Path], local: set[str] = frozenset()) -> dict[str, list[str]]:
    """Top-level third-party modules imported anywhere in *files* -> where."""
    where: dict[str, list[str]] = {}
    for path in files:
        for top, line in _imports_in(path):
            if top in sys.stdlib_module_names or top == "lambda_actors" or top in local:
                continue
            where.setdefault(top, []).append(f"{path.relative_to(ROOT)}:{line}")
    return where


def _declared(requirements: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in requirements}


@pytest.mark.parametrize(
    "part, files, allowed",
    [
        ("the runtime (core dependencies)", RUNTIME_FILES, ["core"]),
        ("the bot (extra 'bot')", BOT_FILES, ["core", "bot"]),
        ("the loopback harness (extras 'bot' and 'test')", LOOPBACK_FILES, ["core", "bot", "test"]),
        ("the tests (extras 'bot' and 'test')", TEST_FILES, ["core", "bot", "test"]),
    ],
)
def test_every_import_is_declared_for_the_part_it_is_in(part, files, allowed):
    groups = {"core": CORE, **EXTRAS}
    declared = set().union(*(_declared(groups[g]) for g in allowed))
    local = LOCAL_TEST_MODULES if files is TEST_FILES else set()
    undeclared = {}
    for module, where in _third_party_imports(files, local).items():
        providers = DIST_OF_IMPORT.get(module, set())
        if providers & declared:
            continue
        if module in PROVIDED_BY and canonicalize_name(PROVIDED_BY[module]) in declared:
            continue
        undeclared[module] = (sorted(providers) or ["not installed"], where[:3])
    assert not undeclared, (
        f"{part} imports modules that pyproject.toml does not declare for it "
        f"(module: (distribution, where)); add each to {' or '.join(allowed)}: {undeclared}"
    )


def test_transitive_imports_are_really_brought_by_their_dependency():
    for module, dist in PROVIDED_BY.items():
        requires = [Requirement(r).name for r in importlib.metadata.requires(dist) or []]
        providers = DIST_OF_IMPORT.get(module, set())
        assert providers & {canonicalize_name(r) for r in requires}, (
            f"{module} is allowed because {dist} requires it, but {dist} no longer does: declare it"
        )


@pytest.mark.parametrize(
    "group, files",
    [
        ("core", RUNTIME_FILES),
        ("bot", BOT_FILES),
        ("test", TEST_FILES + LOOPBACK_FILES),
    ],
)
def test_every_declared_dependency_is_used_by_the_part_it_serves(group, files):
    requirements = CORE if group == "core" else EXTRAS[group]
    imported = set(_third_party_imports(files, LOCAL_TEST_MODULES))
    everything = set(_third_party_imports(_files("lambda_actors")))
    unused = []
    for req in requirements:
        dist = canonicalize_name(req.name)
        if dist in USED_WITHOUT_IMPORT:
            path, text = USED_WITHOUT_IMPORT[dist]
            assert text in (ROOT / path).read_text(), f"{req.name} is declared for its use in {path} ({text!r}), which is gone"
            continue
        provides = _imports_of(req.name)
        assert provides, f"{req.name} is declared in pyproject.toml but not installed here: run scripts/setup"
        if req.name.lower().startswith("types-"):
            # Stubs serve mypy wherever lambda_actors imports what they type.
            if provides & everything:
                continue
        elif provides & imported:
            continue
        unused.append(req.name)
    assert not unused, f"declared in '{group}' but nothing it serves imports them; remove them: {unused}"


def test_importing_the_runtime_loads_no_bot_or_test_dependency():
    forbidden = set()
    for req in EXTRAS["bot"] + EXTRAS["test"]:
        forbidden |= _imports_of(req.name)
    forbidden -= {name for req in CORE for name in _imports_of(req.name)}
    # structlog (core) imports rich by itself whenever it is installed (its
    # console renderer); the runtime needs none of it (.venv-floor runs without).
    forbidden -= {"rich"}
    code = (
        "import sys, pkgutil, importlib, lambda_actors, lambda_actors.runtime as r\n"
        "for m in pkgutil.iter_modules(r.__path__): importlib.import_module('lambda_actors.runtime.' + m.name)\n"
        "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())
    assert "trio" in loaded
    assert not loaded & forbidden, f"importing the runtime loaded {sorted(loaded & forbidden)}"


def test_each_core_dependency_states_one_floor_for_the_floor_venv():
    for req in CORE:
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == ">=" and not req.marker and not req.extras, (
            f"core dependency {req} must be 'name>=version': scripts/test installs that version exactly in .venv-floor"
        )


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line.strip())
        assert m, f"constraints.txt: {line!r} is not 'name==version'; regenerate it with scripts/setup --lock"
        pins[canonicalize_name(m[1])] = m[2]
    return pins


def test_constraints_pin_every_declared_dependency_within_its_range():
    pins = _pins()
    assert "lambda-actors" not in pins, "constraints.txt must not pin the project itself"
    for req in CORE + [r for reqs in EXTRAS.values() for r in reqs]:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in constraints.txt; run scripts/setup --lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req}; run scripts/setup --lock"
        )


def test_this_environment_holds_the_locked_versions():
    wrong = {}
    for name, version in _pins().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # pinned for another platform's resolution, or not needed here
        if installed != version:
            wrong[name] = f"{installed} installed, {version} locked"
    assert not wrong, f"this venv differs from constraints.txt (run scripts/setup, or re-lock on purpose): {wrong}"


def test_the_readme_shows_both_installs_and_names_only_real_extras():
    readme = (ROOT / "README.md").read_text()
    assert "pip install lambda_actors\n" in readme or "pip install lambda_actors " in readme
    assert "pip install 'lambda_actors[bot]'" in readme
    for extras in re.findall(r"lambda_actors\[([a-z,]+)\]", readme):
        for extra in extras.split(","):
            assert extra in EXTRAS, f"README names the extra {extra!r}, which pyproject.toml does not define"


def test_mypy_checks_the_runtime_strictly_and_skips_only_modules_that_exist():
    overrides = PYPROJECT["tool"]["mypy"]["overrides"]
    strict = next(o for o in overrides if "lambda_actors.runtime.*" in o["module"])
    for flag in ("disallow_untyped_defs", "disallow_any_generics", "warn_return_any", "strict_equality"):
        assert strict.get(flag) is True, f"the runtime's mypy override lost {flag}"
    assert not [o for o in overrides if o.get("ignore_errors")], "no module is skipped by mypy: fix its errors instead"


def test_every_type_ignore_says_why():
    bare = []
    for path in _files("lambda_actors", "benchmarks", "examples"):
        rel = str(path.relative_to(ROOT))
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"#\s*type:\s*ignore", line) and not re.search(r"#\s*type:\s*ignore\[[^\]]+\]\s*#\s*\S", line):
                bare.append(f"{rel}:{n}")
    assert not bare, f"a `type: ignore[code]` needs a reason beside it (`# type: ignore[code]  # why`): {bare}"


def test_the_wheel_ships_every_module_and_the_package_data_and_requires_only_the_runtimes_dependencies(tmp_path):
    # Built from a copy so the build's own folders (build/, *.egg-info) stay
    # out of the tree; with the locked setuptools already in this venv, so no
    # download (scripts/setup installs it from constraints.txt).
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "lambda_actors", source / "lambda_actors", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("lambda_actors-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
        metadata = archive.read(next(n for n in shipped if n.endswith(".dist-info/METADATA"))).decode()
    wanted = {str(p.relative_to(ROOT)) for p in _files("lambda_actors")} | {"lambda_actors/bot/supervision.toml"}
    assert not wanted - shipped, f"the wheel leaves out {sorted(wanted - shipped)}"
    unconditional = {
        line.removeprefix("Requires-Dist: ")
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ") and "extra ==" not in line
    }
    assert {str(Requirement(r)) for r in unconditional} == {str(r) for r in CORE}
    assert {l.removeprefix("Provides-Extra: ") for l in metadata.splitlines() if l.startswith("Provides-Extra: ")} == set(EXTRAS)
