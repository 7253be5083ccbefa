"""House rules for the layout of the code, checked statically.

Nothing of spattn is imported: every file is parsed with :mod:`ast`, so the checks are fast and
see exactly what is written (including imports that only run inside functions). Modules are
discovered, never listed: ``[tool.setuptools.package-dir]`` in ``pyproject.toml`` says which
directory is which package (``spattn/`` is ``spattn``, ``backends/`` is ``spattn.backends``,
``grammar/`` is ``spattn.grammar``), and every ``*.py`` below those directories is a module
(``a/b/__init__.py`` is the package ``a.b``), so new sub-packages are picked up on their own.

Rule 1, no import cycle among the project's modules. Every ``import`` and ``from ... import``
of every module is an edge, wherever it is written: at module level, inside a function or
method (a lazy import runs as soon as that function does, which is how cycles hide), in a
``try`` block. Imports in the body of ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) never
run and are left out; its ``else`` branch counts. Relative imports are resolved (level 1 is the
importer's package, level 2 that package's parent, ...). Targets:

* ``import a.b.c``: an edge to ``a.b.c`` (to its longest prefix that is a project module, should
  ``a.b.c`` not exist).
* ``from P import x``: an edge to ``P.x`` when that is a module or package of the project, else
  to ``P`` itself; so ``from spattn import compile`` inside ``spattn/lower.py`` is an edge to
  ``spattn`` (its ``__init__``), which can close a cycle and is counted.
* Parent packages: importing ``a.b.c`` first runs ``a/__init__`` and ``a/b/__init__``. Each such
  parent package ``__init__`` gets an edge too, unless it is one of the importer's own enclosing
  packages (those are already being imported when the importer runs, so the edge would be
  noise: every submodule would form a cycle with its package ``__init__``).
* Allowed exception: a package ``__init__`` importing its own submodules inside a module-level
  ``def __getattr__`` (the PEP 562 lazy attribute pattern of ``spattn/__init__.py``) adds no
  edge. The same imports anywhere else in the ``__init__`` do count.
* Self-edges are ignored; dynamic imports (``importlib.import_module(...)``) are not seen.

Cycles are the strongly connected components of that graph (Tarjan); for each component the
failure lists, for every edge inside it, the shortest cycle through that edge, as
``a -> b -> ... -> a``, with the ``file:line`` (and enclosing function) of every import that
makes each edge.

Rule 2, module size: every module of spattn, spattn.backends and spattn.grammar has at most
``MAX_LINES`` (600) physical lines (newline characters, plus one for an unterminated last line).

Rule 3, no private name used across modules, in every ``*.py`` of the package directories and of
``bench/``, ``examples/``, ``docs/`` and ``tests/``. A private name starts with an underscore
and is not a dunder (``_x``, ``__x``; not ``__all__``). A project module is a module of the
package (``spattn...``) or a file of one of those script directories imported by its bare name
(``_common``, ``reference``). Violations:

* ``from M import _x`` for a project module ``M`` (a relative ``from .M import _x`` too),
  except from within ``M`` itself;
* ``alias._x``, where ``alias`` is bound in that file by importing a project module
  (``import spattn.pattern as P; P._compile_text``, ``from spattn import analysis;
  analysis._kv_cache``, ``import spattn; spattn.pattern._compile_text``). Names are looked up
  through the scopes of the file (module, functions, classes), so a function argument or local
  variable of the same name shadows the import; ``getattr``/``setattr``/``delattr`` (also
  ``monkeypatch.setattr``) with a constant private attribute name count as the access (not
  ``hasattr``: asserting that a private name is gone is fine), as do dotted text targets such
  as ``monkeypatch.setattr("spattn.guard._x", ...)`` or ``mock.patch("spattn.guard._x")``;
* importing (or reaching as an attribute) a private MODULE, one whose dotted name has a
  private part, e.g. ``spattn.backends._cpu_plan``, from outside the package that contains that
  part: ``from ._cpu_plan import Plan`` inside ``backends/cpu.py`` is fine, ``from
  spattn.backends import _cpu_plan`` in a test is not. For a script directory the "package" is
  the directory: ``bench/cpu.py`` importing ``_common`` (``bench/_common.py``) is fine, a test
  importing it is not. Public names taken from a private module of one's own package are fine;
  private names taken from it are not.

``from __future__ import ...`` and dunder names are never violations. Imports under
``if TYPE_CHECKING:`` do count for rule 3 (a private name in an annotation is still coupling).

The checkers are plain functions over a directory tree; the ``test_checker_*`` tests run them on
tiny synthetic trees, so a scanner that finds nothing cannot pass silently.
"""

from __future__ import annotations

import ast
import functools
import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOTS = {"spattn": "spattn", "spattn.backends": "backends", "spattn.grammar": "grammar"}
"""Package -> directory, used when ``pyproject.toml`` cannot be read (Python 3.10, no tomllib)."""
SCRIPT_DIRS = ("bench", "examples", "docs", "tests")
"""Directories of scripts and test modules, scanned for rule 3 only."""
MAX_LINES = 600


# ---------------------------------------------------------------------------------------------
# discovery


def package_roots(repo: Path) -> dict[str, str]:
    """``[tool.setuptools.package-dir]`` of ``repo/pyproject.toml``: package -> directory."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return dict(DEFAULT_ROOTS)
    try:
        data = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return dict(DEFAULT_ROOTS)
    dirs = data.get("tool", {}).get("setuptools", {}).get("package-dir") or {}
    roots = {pkg: str(d) for pkg, d in dirs.items() if pkg}
    return roots or dict(DEFAULT_ROOTS)


def _python_files(base: Path) -> Iterator[Path]:
    if not base.is_dir():
        return
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(base).parts
        if not any(p.startswith(".") or p == "__pycache__" for p in parts):
            yield path


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@dataclass
class Project:
    """The files of a tree: package modules (by dotted name) and script files."""

    repo: Path
    modules: dict[str, Path] = field(default_factory=dict)
    packages: set[str] = field(default_factory=set)
    scripts: list[Path] = field(default_factory=list)
    bare: dict[str, set[Path]] = field(default_factory=dict)  # stem -> directories holding it

    def nearest(self, name: str | None) -> str | None:
        """The longest prefix of dotted ``name`` that is a project module, if any."""
        if not name:
            return None
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            prefix = ".".join(parts[:i])
            if prefix in self.modules:
                return prefix
        return None

    def rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.repo).as_posix()
        except ValueError:
            return path.as_posix()


def scan(repo: Path, roots: Mapping[str, str], script_dirs: Iterable[str] = ()) -> Project:
    project = Project(repo)
    for pkg, rel in sorted(roots.items()):
        base = repo / rel
        for path in _python_files(base):
            parts = path.relative_to(base).with_suffix("").parts
            if not all(p.isidentifier() for p in parts):
                continue
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            name = ".".join((pkg, *parts))
            project.modules[name] = path
            if is_pkg:
                project.packages.add(name)
    package_files = set(project.modules.values())
    for d in script_dirs:
        for path in _python_files(repo / d):
            if path not in package_files:
                project.scripts.append(path)
                project.bare.setdefault(path.stem, set()).add(path.parent)
    return project


@functools.cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _from_base(importer: str | None, is_pkg: bool, level: int, module: str | None) -> str | None:
    """The absolute module a ``from`` import names (None when it cannot be resolved)."""
    if level == 0:
        return module
    if importer is None:
        return None
    package = importer.split(".") if is_pkg else importer.split(".")[:-1]
    if level - 1 >= len(package):
        return None
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _inside(importer: str | None, package: str) -> bool:
    return importer is not None and (importer == package or importer.startswith(package + "."))


# ---------------------------------------------------------------------------------------------
# rule 1: import cycles


@dataclass(frozen=True)
class ImportStmt:
    node: ast.Import | ast.ImportFrom
    scope: str  # qualified name of the enclosing def/class; "" at module level
    type_checking: bool  # in the body of ``if TYPE_CHECKING:``
    in_getattr: bool  # inside a module-level ``def __getattr__``


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def collect_imports(tree: ast.Module) -> list[ImportStmt]:
    """Every import statement of ``tree``, at any depth."""
    out: list[ImportStmt] = []

    def visit(node: ast.AST, scope: tuple[str, ...], tc: bool, ga: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(ImportStmt(node, ".".join(scope), tc, ga))
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                visit(stmt, scope, True, ga)
            for stmt in node.orelse:
                visit(stmt, scope, tc, ga)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if not scope and not isinstance(node, ast.ClassDef) and node.name == "__getattr__":
                ga = True
            scope = (*scope, node.name)
        for child in ast.iter_child_nodes(node):
            visit(child, scope, tc, ga)

    visit(tree, (), False, False)
    return out


@dataclass(frozen=True)
class Site:
    """Where an edge of the import graph is made."""

    path: str
    line: int
    scope: str
    note: str = ""

    def __str__(self) -> str:
        where = f"in {self.scope}" if self.scope else "at module level"
        return f"{self.path}:{self.line} {where}" + (f" ({self.note})" if self.note else "")


Graph = dict[str, dict[str, list[Site]]]


def _explicit_targets(project: Project, mod: str, is_pkg: bool,
                      node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [t for a in node.names if (t := project.nearest(a.name))]
    base = _from_base(mod, is_pkg, node.level, node.module)
    if base is None:
        return []
    out = []
    for a in node.names:
        sub = f"{base}.{a.name}"
        target = sub if sub in project.modules else project.nearest(base)
        if target:
            out.append(target)
    return out


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(project: Project) -> Graph:
    graph: Graph = {m: {} for m in project.modules}
    for mod, path in sorted(project.modules.items()):
        is_pkg = mod in project.packages
        own_chain = {*_ancestors(mod), mod}
        for stmt in collect_imports(_parse(path)):
            if stmt.type_checking:
                continue
            for target in _explicit_targets(project, mod, is_pkg, stmt.node):
                implied = [(p, f"runs the package __init__ of {target}")
                           for p in _ancestors(target)
                           if p in project.modules and p not in own_chain]
                for dst, note in [(target, ""), *implied]:
                    if dst == mod or (stmt.in_getattr and is_pkg and dst.startswith(mod + ".")):
                        continue
                    site = Site(project.rel(path), stmt.node.lineno, stmt.scope, note)
                    sites = graph[mod].setdefault(dst, [])
                    if site not in sites:
                        sites.append(site)
    return graph


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = itertools.count()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = next(counter)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def _shortest_path(graph: Graph, start: str, goal: str, allowed: set[str]) -> list[str]:
    prev: dict[str, str | None] = {start: None}
    todo = deque([start])
    while todo:
        v = todo.popleft()
        if v == goal:
            path = [v]
            while prev[path[-1]] is not None:
                path.append(prev[path[-1]])  # type: ignore[arg-type]
            return path[::-1]
        for w in sorted(graph.get(v, ())):
            if w in allowed and w not in prev:
                prev[w] = v
                todo.append(w)
    raise AssertionError(f"no path {start} -> {goal} inside a strongly connected component")


def find_cycles(graph: Graph) -> list[tuple[list[str], list[str]]]:
    """(component, cycles) for each component with a cycle; a cycle is ``[a, b, ..., a]``, the
    shortest one through each edge of the component."""
    found = []
    for comp in strongly_connected(graph):
        if len(comp) < 2:
            continue
        members = set(comp)
        rings: set[tuple[str, ...]] = set()
        for u in comp:
            for v in graph[u]:
                if v in members:
                    ring = [u, *_shortest_path(graph, v, u, members)[:-1]]
                    i = ring.index(min(ring))
                    rings.add(tuple(ring[i:] + ring[:i]))
        cycles = sorted(([*r, r[0]] for r in rings), key=lambda c: (len(c), c))
        found.append((comp, cycles))
    return found


def format_cycles(graph: Graph, found: list[tuple[list[str], list[str]]]) -> str:
    n = sum(len(cycles) for _, cycles in found)
    lines = [f"{n} import cycle(s) in {len(found)} group(s) of modules (imports inside "
             "functions count; `if TYPE_CHECKING:` imports do not):"]
    for comp, cycles in found:
        lines.append(f"\n  modules importing each other: {', '.join(comp)}")
        for cyc in cycles:
            lines.append("    " + " -> ".join(cyc))
            for a, b in itertools.pairwise(cyc):
                for i, site in enumerate(graph[a][b]):
                    head = f"{a} -> {b}:" if i == 0 else ""
                    lines.append(f"        {head:<{len(a) + len(b) + 5}} {site}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# rule 2: module size


def physical_lines(path: Path) -> int:
    data = path.read_bytes()
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def oversized(project: Project, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    out = [(project.rel(p), physical_lines(p)) for p in project.modules.values()]
    return sorted((rel, n) for rel, n in out if n > limit)


# ---------------------------------------------------------------------------------------------
# rule 3: private names across modules


@dataclass(frozen=True, order=True)
class Violation:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


_SCOPE_NODES = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_ATTR_FUNCS = {"getattr", "setattr", "delattr"}  # not hasattr: probing for absence is fine
_TEXT_TARGET_FUNCS = {"setattr", "delattr", "patch"}


@dataclass
class _FileCheck:
    """Rule 3 for one file: ``importer`` is its dotted name (None for a script)."""

    project: Project
    path: Path
    importer: str | None
    is_pkg: bool
    out: set[Violation] = field(default_factory=set)

    # --- what names denote

    def _flag(self, node: ast.AST, what: str) -> None:
        self.out.add(Violation(self.project.rel(self.path), node.lineno, what))

    def _bare_module(self, name: str | None) -> str | None:
        if self.importer is None and name and name in self.project.bare:
            return name
        return None

    def _check_private_module(self, node: ast.AST, module: str, how: str) -> None:
        """``module`` (dotted, or a bare script name) reached from this file."""
        if module in self.project.bare and module not in self.project.modules:
            if is_private(module) and self.path.parent not in self.project.bare[module]:
                dirs = ", ".join(sorted(self.project.rel(d) + "/" for d in
                                        self.project.bare[module]))
                self._flag(node, f"{how} private module {module} (a helper of {dirs})")
            return
        parts = module.split(".")
        for i, part in enumerate(parts):
            if is_private(part):
                owner = ".".join(parts[:i])
                if not _inside(self.importer, owner):
                    self._flag(node, f"{how} private module {'.'.join(parts[:i + 1])} from "
                                     f"outside {owner}")
                return

    def _check_private_attr(self, node: ast.AST, module: str, attr: str, how: str) -> None:
        """Name ``attr`` of project ``module`` used here."""
        if not is_private(attr):
            return
        sub = f"{module}.{attr}"
        if sub in self.project.modules:
            self._check_private_module(node, sub, how)
        elif module != self.importer and not (
                module in self.project.bare and self.path.stem == module
                and self.path.parent in self.project.bare[module]):
            self._flag(node, f"{how} private name {attr} of {module}")

    def _import(self, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
        """Check one import; return the names it binds and the project module each denotes."""
        project = self.project
        bound: list[tuple[str, str | None]] = []
        if isinstance(node, ast.Import):
            for a in node.names:
                if project.nearest(a.name):
                    self._check_private_module(node, a.name, "imports")
                    if a.asname:
                        bound.append((a.asname, a.name if a.name in project.modules else None))
                    else:
                        top = a.name.split(".")[0]
                        bound.append((top, top if top in project.modules else None))
                elif self._bare_module(a.name):
                    self._check_private_module(node, a.name, "imports")
                    bound.append((a.asname or a.name, a.name))
                else:
                    bound.append(((a.asname or a.name).split(".")[0], None))
            return bound
        names = [(a.asname or a.name, a.name) for a in node.names if a.name != "*"]
        if node.module == "__future__":
            return []
        base = _from_base(self.importer, self.is_pkg, node.level, node.module)
        if base and project.nearest(base):
            self._check_private_module(node, base, "imports from")
            for local, name in names:
                sub = f"{base}.{name}"
                if sub in project.modules:
                    self._check_private_module(node, sub, "imports")
                    bound.append((local, sub))
                else:
                    if is_private(name) and project.nearest(base) != self.importer:
                        self._flag(node, f"imports private name {name} from {base}")
                    bound.append((local, None))
            return bound
        if node.level == 0 and self._bare_module(base):
            assert base is not None
            self._check_private_module(node, base, "imports from")
            for _, name in names:
                self._check_private_attr(node, base, name, "imports")
        return [(local, None) for local, _ in names]

    # --- scopes

    def _bindings(self, scope: ast.AST) -> tuple[dict[str, str], set[str]]:
        """Names bound in ``scope``: those bound to a project module by an import, and the
        others (assignments, arguments, defs, other imports)."""
        modules: dict[str, str] = {}
        other: set[str] = set()
        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = scope.args
            for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
                if arg is not None:
                    other.add(arg.arg)
        todo = list(ast.iter_child_nodes(scope))
        while todo:
            node = todo.pop()
            if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                other.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                other.add(node.name)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                other.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for local, module in self._import(node):
                    if module is not None:
                        modules[local] = module
                    else:
                        other.add(local)
            if not isinstance(node, _SCOPE_NODES):
                todo.extend(ast.iter_child_nodes(node))
        return modules, other

    @staticmethod
    def _lookup(name: str, chain: list[tuple[ast.AST, dict[str, str], set[str]]]) -> str | None:
        for depth, (scope, modules, other) in enumerate(reversed(chain)):
            if depth > 0 and isinstance(scope, ast.ClassDef):
                continue  # a class body is not an enclosing scope of its methods
            if name in modules:
                return modules[name]
            if name in other:
                return None
        return None

    def _module_of(self, expr: ast.AST, chain) -> str | None:
        """The project module ``expr`` denotes (``alias``, ``alias.sub``), if any."""
        if isinstance(expr, ast.Name):
            return self._lookup(expr.id, chain)
        if isinstance(expr, ast.Attribute):
            base = self._module_of(expr.value, chain)
            if base is not None and f"{base}.{expr.attr}" in self.project.modules:
                return f"{base}.{expr.attr}"
        return None

    def _check_call(self, node: ast.Call, chain) -> None:
        func = node.func
        fname = func.id if isinstance(func, ast.Name) else (
            func.attr if isinstance(func, ast.Attribute) else None)
        args = node.args
        if (fname in _ATTR_FUNCS and len(args) >= 2 and isinstance(args[1], ast.Constant)
                and isinstance(args[1].value, str)):
            module = self._module_of(args[0], chain)
            if module is not None:
                self._check_private_attr(node, module, args[1].value, f"{fname}() on")
        if (fname in _TEXT_TARGET_FUNCS and args and isinstance(args[0], ast.Constant)
                and isinstance(args[0].value, str) and "." in args[0].value):
            text = args[0].value
            module = self.project.nearest(text)
            if module is not None and text.startswith(module):
                self._check_private_module(node, module, f"{fname}({text!r}) reaches")
                rest = text[len(module) + 1:].split(".")
                if rest[0]:
                    self._check_private_attr(node, module, rest[0], f"{fname}({text!r}) uses")

    def run(self) -> set[Violation]:
        def visit(node: ast.AST, chain) -> None:
            if isinstance(node, _SCOPE_NODES):
                chain = [*chain, (node, *self._bindings(node))]
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                module = self._module_of(node.value, chain)
                if module is not None:
                    self._check_private_attr(node, module, node.attr, "uses")
            elif isinstance(node, ast.Call):
                self._check_call(node, chain)
            for child in ast.iter_child_nodes(node):
                visit(child, chain)

        visit(_parse(self.path), [])
        return self.out


def private_imports(project: Project) -> list[Violation]:
    found: set[Violation] = set()
    for mod, path in project.modules.items():
        found |= _FileCheck(project, path, mod, mod in project.packages).run()
    for path in project.scripts:
        found |= _FileCheck(project, path, None, False).run()
    return sorted(found)


# ---------------------------------------------------------------------------------------------
# the rules, on this repository


@pytest.fixture(scope="module")
def project() -> Project:
    return scan(REPO, package_roots(REPO), SCRIPT_DIRS)


def test_scanner_sees_the_project(project: Project) -> None:
    assert len(project.modules) > 20, sorted(project.modules)
    for pkg in package_roots(REPO):
        assert any(_inside(m, pkg) for m in project.modules), f"no module found for {pkg}"
    edges = sum(len(dsts) for dsts in import_graph(project).values())
    assert edges > 20, f"only {edges} import edges among {len(project.modules)} modules"
    assert len(project.scripts) > 10, [project.rel(p) for p in project.scripts]


def test_no_import_cycles(project: Project) -> None:
    graph = import_graph(project)
    found = find_cycles(graph)
    if found:
        pytest.fail(format_cycles(graph, found), pytrace=False)


def test_module_size(project: Project) -> None:
    big = oversized(project)
    if big:
        lines = [f"  {rel}: {n} lines (+{n - MAX_LINES})" for rel, n in big]
        pytest.fail(f"{len(big)} module(s) over {MAX_LINES} lines:\n" + "\n".join(lines),
                    pytrace=False)


def test_no_private_names_across_modules(project: Project) -> None:
    found = private_imports(project)
    if found:
        pytest.fail(f"{len(found)} use(s) of another module's private name or private module:\n"
                    + "\n".join(f"  {v}" for v in found), pytrace=False)


def test_architecture_page_names_every_module(project: Project) -> None:
    """docs/ARCHITECTURE.md gives every module its one-line job: a new module needs a line."""
    page = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    missing = [project.rel(p) for p in project.modules.values()
               if f"`{project.rel(p)}`" not in page]
    if missing:
        pytest.fail("docs/ARCHITECTURE.md does not name: " + ", ".join(sorted(missing)),
                    pytrace=False)


# ---------------------------------------------------------------------------------------------
# the checkers, on synthetic trees


def _tree(root: Path, files: Mapping[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_checker_import_cycles(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        # pkg -> f at module level, f -> pkg (its own package's __init__): a cycle
        "pkg/__init__.py": "from .a import A\nfrom . import f\n\n\ndef __getattr__(name):\n"
                           "    from .e import E\n    return E\n",
        # a -> b only inside a method, b -> a at module level: a cycle
        "pkg/a.py": "class A:\n    def make(self):\n        from . import b\n        return b\n",
        "pkg/b.py": "from pkg.a import A\n",
        # c -> d only under TYPE_CHECKING: no cycle with d -> c
        "pkg/c.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .d import D\n",
        "pkg/d.py": "from . import c\n",
        # pkg -> e only in the module-level __getattr__ of pkg: allowed, no cycle with e -> pkg
        "pkg/e.py": "import pkg\n",
        "pkg/f.py": "from pkg import A\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/g.py": "from .. import a\nfrom ..c import helper\nimport pkg.sub.h\n",
        "pkg/sub/h.py": "",
        "pkg/other/__init__.py": "",
        "pkg/other/i.py": "from pkg.sub.h import x\n",
    })
    project = scan(root, {"pkg": "pkg"})
    graph = import_graph(project)
    assert set(graph["pkg.a"]) == {"pkg.b"}
    assert graph["pkg.a"]["pkg.b"] == [Site("pkg/a.py", 3, "A.make")]
    assert set(graph["pkg.c"]) == set()
    assert set(graph["pkg.d"]) == {"pkg.c"}
    assert set(graph["pkg"]) == {"pkg.a", "pkg.f"}
    assert set(graph["pkg.e"]) == {"pkg"}
    assert set(graph["pkg.sub.g"]) == {"pkg.a", "pkg.c", "pkg.sub.h"}
    assert set(graph["pkg.other.i"]) == {"pkg.sub.h", "pkg.sub"}  # pkg.sub's __init__ runs
    found = find_cycles(graph)
    assert sorted(c for _, cycles in found for c in cycles) == [
        ["pkg", "pkg.f", "pkg"], ["pkg.a", "pkg.b", "pkg.a"]]
    text = format_cycles(graph, found)
    assert "pkg.a -> pkg.b -> pkg.a" in text and "pkg/a.py:3 in A.make" in text
    assert "pkg/b.py:1 at module level" in text and "pkg/f.py:1" in text


def test_checker_tarjan_big_component() -> None:
    graph: Graph = {"a": {"b": []}, "b": {"c": [], "a": []}, "c": {"a": []}, "d": {"a": []}}
    assert sorted(strongly_connected(graph)) == [["a", "b", "c"], ["d"]]
    [(comp, cycles)] = find_cycles(graph)
    assert comp == ["a", "b", "c"]
    assert cycles == [["a", "b", "a"], ["a", "b", "c", "a"]]


def test_checker_module_size(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"pkg/__init__.py": "x = 1\n" * MAX_LINES,
                            "pkg/big.py": "x = 1\n" * MAX_LINES + "y = 2"})
    assert oversized(scan(root, {"pkg": "pkg"})) == [("pkg/big.py", MAX_LINES + 1)]


def test_checker_private_names(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "pkg/__init__.py": "from . import _priv\n",
        "pkg/a.py": "from __future__ import annotations\n_hidden = 1\n__version__ = '1'\n",
        "pkg/_priv.py": "Public = 1\n_inner = 2\n",
        "pkg/user.py": "from ._priv import Public\nfrom ._priv import _inner\n"
                       "from pkg.a import __version__\n",
        "lib/__init__.py": "",
        "lib/m.py": "from pkg.a import _hidden\n",
        "scripts/_helper.py": "X = 1\n_y = 2\n",
        "scripts/run.py": (
            "from _helper import X\n"
            "from _helper import _y\n"
            "import pkg.a as P\n"
            "from pkg import a, _priv\n"
            "import pkg\n\n"
            "P._hidden\n"
            "a._hidden\n"
            "pkg.a._hidden\n"
            "getattr(a, '_hidden')\n"
            "patch('pkg.a._hidden')\n\n\n"
            "def shadowed(P, a):\n"
            "    return P._x, a._x, len._x\n"
        ),
        "other/x.py": "import _helper\nimport _thread\nfrom os import _exit\n",
    })
    project = scan(root, {"pkg": "pkg", "lib": "lib"}, ("scripts", "other"))
    got = {(v.path, v.line): v.what for v in private_imports(project)}
    assert got == {
        ("pkg/user.py", 2): "imports private name _inner from pkg._priv",
        ("lib/m.py", 1): "imports private name _hidden from pkg.a",
        ("scripts/run.py", 2): "imports private name _y of _helper",
        ("scripts/run.py", 4): "imports private module pkg._priv from outside pkg",
        ("scripts/run.py", 7): "uses private name _hidden of pkg.a",
        ("scripts/run.py", 8): "uses private name _hidden of pkg.a",
        ("scripts/run.py", 9): "uses private name _hidden of pkg.a",
        ("scripts/run.py", 10): "getattr() on private name _hidden of pkg.a",
        ("scripts/run.py", 11): "patch('pkg.a._hidden') uses private name _hidden of pkg.a",
        ("other/x.py", 1): "imports private module _helper (a helper of scripts/)",
    }
