"""The house rules of ``docs/architecture.md``, checked on the source with ``ast`` (nothing is imported).

- no import circle between modules of ``ctsgan_lib`` (module-level imports, i.e. what runs on import);
- no module imports a higher layer than its own, per the layer table in ``docs/architecture.md``;
- every import inside a function outside ``commands/`` carries a comment saying why (same line or the line above);
- a module over 600 lines says at the top of its docstring why it is long;
- no module imports another module's private (``_``-prefixed) name.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ctsgan_lib.config import Config, load_profile

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ctsgan_lib"
MAX_LINES = 600
LONG_REASON = "Why this module is long:"
# Private names imported across modules, each as (importing module, imported module, name). Keep it empty: make the
# name public instead.
KNOWN_PRIVATE: set[tuple[str, str, str]] = set()


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    lines: list[str]
    top: dict[str, int] = field(default_factory=dict)              # imported module -> line (module level)
    inner: list[tuple[int, str]] = field(default_factory=list)     # (line, source) of imports inside functions
    private: list[tuple[str, str, int]] = field(default_factory=list)  # (module, name, line)


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Module]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        text = p.read_text()
        out[_name(p)] = Module(_name(p), p, ast.parse(text), text.splitlines())
    return out


def _targets(mod: Module, node: ast.ImportFrom | ast.Import, known: set[str]) -> list[tuple[str, str | None]]:
    """(module, imported name or None) pairs of ctsgan_lib modules that an import statement loads."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names if a.name.startswith("ctsgan_lib")]
    if node.level:
        pkg = mod.name.split(".") if mod.path.name == "__init__.py" else mod.name.split(".")[:-1]
        base = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if not base.startswith("ctsgan_lib"):
        return []
    out = []
    for a in node.names:
        sub = f"{base}.{a.name}"
        # `from pkg import submodule` loads the submodule; `from pkg import name` runs pkg/__init__
        out.append((sub, None) if sub in known else (base, a.name))
    return out


def _walk_module_level(tree: ast.AST):
    """Statements that run on import: everything except function bodies (class bodies do run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield node
        yield from _walk_module_level(node)


def _analyse(mods: dict[str, Module]) -> dict[str, Module]:
    known = set(mods)
    for m in mods.values():
        for node in _walk_module_level(m.tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target, name in _targets(m, node, known):
                    if target != m.name:
                        m.top.setdefault(target, node.lineno)
                    if name and name.startswith("_") and name != "__version__":
                        m.private.append((target, name, node.lineno))
        for fn in ast.walk(m.tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        m.inner.append((node.lineno, m.lines[node.lineno - 1].strip()))
                        for target, name in _targets(m, node, known):
                            if name and name.startswith("_"):
                                m.private.append((target, name, node.lineno))
    return mods


MODS = _analyse(_modules())


def _layers() -> dict[str, int]:
    """``{"data": 2, ...}`` from the layer table of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    layers = {}
    for m in re.finditer(r"^\| (\d+) \| ([^|]+) \|", text, re.M):
        for name in re.findall(r"`([\w.]+)`", m.group(2)):
            layers[name] = int(m.group(1))
    return layers


LAYERS = _layers()


def _layer(module: str) -> int | None:
    parts = module.split(".")[1:]  # drop "ctsgan_lib"
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in LAYERS:
            return LAYERS[".".join(parts[:k])]
    return None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_ancestor(pkg: str, mod: str) -> bool:
    return mod.startswith(pkg + ".")


def test_the_layer_table_names_every_top_level_module():
    assert LAYERS, "docs/architecture.md has no layer table"
    tops = {m.split(".")[1] for m in MODS if m != "ctsgan_lib"}
    missing = sorted(t for t in tops if t not in LAYERS)
    assert not missing, f"place these in the layer table of docs/architecture.md: {missing}"
    stale = sorted(k for k in LAYERS if k.split(".")[0] not in tops)
    assert not stale, f"the layer table names modules that do not exist: {stale}"


def test_no_import_cycles():
    # an import of one's own parent package is implied by Python anyway (the parent is imported first): not an edge
    graph = {m: {t for t in mod.top if t in MODS and not _is_ancestor(t, m)} for m, mod in MODS.items()}
    assert not _cycles(graph), f"import circles: {_cycles(graph)}"


def test_imports_run_down_the_layers():
    bad = []
    for m, mod in MODS.items():
        lm = _layer(m)
        for t, line in mod.top.items():
            lt = _layer(t)
            if lm is not None and lt is not None and lt > lm:
                bad.append(f"{mod.path.relative_to(ROOT)}:{line} (layer {lm}) imports {t} (layer {lt})")
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def _commented(mod: Module, line: int) -> bool:
    here = mod.lines[line - 1]
    above = mod.lines[line - 2].strip() if line > 1 else ""
    return "#" in here or above.startswith("#")


def test_imports_inside_functions_say_why():
    bad = [f"{mod.path.relative_to(ROOT)}:{line}: {src}" for m, mod in MODS.items()
           if not m.startswith("ctsgan_lib.commands") for line, src in mod.inner if not _commented(mod, line)]
    assert not bad, ("imports inside functions without a comment (move them to the top, or say which heavy optional "
                     "dependency or measured start-up cost keeps them here):\n" + "\n".join(bad))


def test_long_modules_give_their_reason():
    bad = []
    for mod in MODS.values():
        if len(mod.lines) > MAX_LINES:
            doc = ast.get_docstring(mod.tree) or ""
            if LONG_REASON not in doc:
                bad.append(f"{mod.path.relative_to(ROOT)} ({len(mod.lines)} lines)")
    assert not bad, f"modules over {MAX_LINES} lines without '{LONG_REASON}' in their docstring: {bad}"


def test_no_private_names_imported_across_modules():
    bad = [f"{mod.path.relative_to(ROOT)}:{line}: {name} from {target}" for m, mod in MODS.items()
           for target, name, line in mod.private if (m, target, name) not in KNOWN_PRIVATE]
    assert not bad, "private names imported from other modules:\n" + "\n".join(bad)


def test_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    """The checks above can fail: a two-module circle is found, and layers compare as documented."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}}) == []
    assert _layer("ctsgan_lib.data.cohort") < _layer("ctsgan_lib.nodules.geometry") < _layer("ctsgan_lib.reporting")
    src = "def f():\n    import os\n\n\ndef g():\n    # why\n    import sys\n"
    m = Module("x", tmp_path / "x.py", ast.parse(src), src.splitlines())
    _analyse({"x": m})
    assert [line for line, _ in m.inner if not _commented(m, line)] == [2]


def test_config_replace_matches_load_profile_overrides():
    """``Config.replace`` (used by the benches instead of a YAML round trip) equals loading with the overrides."""
    cfg = load_profile("smoke")
    new = cfg.replace(**{"data.size": 48, "ctsgan.slab_len": 6, "seed": "3"})
    assert isinstance(new, Config) and new == load_profile("smoke", **{"data.size": 48, "ctsgan.slab_len": 6, "seed": 3})
    assert cfg == load_profile("smoke")                      # the original is untouched
    with pytest.raises(ValueError):
        cfg.replace(**{"nosuch.size": 1})


def _readme_layout() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout"):]
    return section[section.index("```\nctsgan_lib/"):section.index("\nnotebooks/")]


def test_readme_layout_matches_the_tree():
    """Every top-level module and package of ctsgan_lib is in the README's Layout, and each package's entry names
    all of its modules."""
    block = _readme_layout()
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines()[2:]:
        if line.startswith("  ") and not line.startswith("   "):
            current = line.split()[0]
            entries[current] = line
        elif current is not None:
            entries[current] += " " + line
    text = " ".join(entries.values())
    tops = sorted(p.name for p in PKG.iterdir() if not p.name.startswith(("_", ".")) and p.name != "__pycache__")
    missing = [t for t in tops if (f"{t}/" if (PKG / t).is_dir() else t) not in text]
    assert not missing, f"README Layout does not mention: {missing}"
    for key, desc in entries.items():
        for name in re.findall(r"\b(\w+)/", key):
            pkg = PKG / name
            if name in ("configs", "commands") or not (pkg / "__init__.py").is_file():
                continue
            mods = sorted(p.stem if p.suffix else p.name for p in pkg.iterdir()
                          if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file())
            absent = [m for m in mods if not re.search(rf"\b{m}\b", desc)]
            assert not absent, f"README Layout entry {name}/ does not name its modules {absent}"
