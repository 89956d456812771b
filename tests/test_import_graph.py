"""The import graph of cnetcli: no modules import each other in a loop, and no import runs up the layers.

Every import counts, the ones inside functions too (a function-level import hides a loop, it does not break
it). A package importing its own submodule (``cnetcli.data`` -> ``cnetcli.data.read``) is no edge: that is how
a package re-exports. The layers, lowest first, are described in docs/ARCHITECTURE.md ("Layers")."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "cnetcli"

#: lowest first; a module may import its own layer and the ones below, never one above. The longest prefix
#: that matches a module's dotted name (after "cnetcli.") decides its layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "fsguard", "folderlock", "device", "images", "numerics", "reporting", "config_check",
     "project_config", "models.hub", "external"),
    ("data",),
    # generation.samplers: the scheduler table the families build from
    ("models", "generation.samplers"),
    ("annotators",),
    ("annotation", "training", "generation", "evaluation", "synthetic"),
    ("demo",),
    ("commands", "cli", "__main__"),
)

#: edges that still run up (lower -> higher), each with why it is not fixed yet; the test fails when one
#: disappears too, so this list only shrinks.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}

#: loops not broken yet, with why; the test fails when one disappears too, so this list only shrinks.
KNOWN_CYCLES: dict[tuple[str, ...], str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _targets(mod: str, is_pkg: bool, node: ast.Import | ast.ImportFrom, mods: dict[str, Path]) -> list[str]:
    """The cnetcli modules an import statement loads (``from pkg import sub`` -> ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = mod.split(".") if is_pkg else mod.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
    out = []
    for n in names:
        while n and n not in mods:  # `import cnetcli.x.y` of a name inside a module
            n = n.rpartition(".")[0]
        if n.startswith("cnetcli"):
            out.append(n)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(_targets(mod, path.name == "__init__.py", node, mods))
        # `from .. import __version__`: the root package is every module's parent, loaded first; not an edge
        graph[mod] = {t for t in edges if t not in (mod, "cnetcli") and not t.startswith(mod + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def layer_of(mod: str) -> int | None:
    """The layer of a cnetcli module (None: the package root `cnetcli`, which re-exports the API: above all)."""
    rest = mod.removeprefix("cnetcli").removeprefix(".")
    found = [(len(p), i) for i, prefixes in enumerate(LAYERS) for p in prefixes
             if rest == p or rest.startswith(p + ".")]
    return max(found)[1] if found else None


def test_the_scan_sees_function_level_imports(tmp_path):
    """The scan is no stub: a loop made only of function-level imports is found."""
    graph = {"cnetcli.a": {"cnetcli.b"}, "cnetcli.b": {"cnetcli.c"}, "cnetcli.c": {"cnetcli.a"}, "cnetcli.d": set()}
    assert _cycles(graph) == [["cnetcli.a", "cnetcli.b", "cnetcli.c"]]
    src = "def f():\n    from .read import x\n"
    node = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom))
    mods = {"cnetcli.data.read": Path(), "cnetcli.data.tables": Path()}
    assert _targets("cnetcli.data.tables", False, node, mods) == ["cnetcli.data.read"]


def test_no_import_cycles():
    cycles = {tuple(c) for c in _cycles(_graph())}
    new = sorted(cycles - set(KNOWN_CYCLES))
    assert not new, "modules that import each other in a loop (move the shared piece to the lower one): " \
        + "; ".join(" <-> ".join(c) for c in new)
    assert not set(KNOWN_CYCLES) - cycles, f"fixed: remove from KNOWN_CYCLES: {sorted(set(KNOWN_CYCLES) - cycles)}"


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in _graph() if m != "cnetcli" and layer_of(m) is None)
    assert not unplaced, f"modules with no layer in LAYERS (add them, and to docs/ARCHITECTURE.md): {unplaced}"


def test_no_import_runs_up_the_layers():
    up = set()
    for mod, targets in _graph().items():
        for t in targets:
            lm, lt = layer_of(mod), layer_of(t)
            if lm is not None and (lt is None or lt > lm):
                up.add((mod, t))
    new = sorted(up - set(KNOWN_UPWARD))
    assert not new, "imports that run up the layers: " + "; ".join(f"{a} -> {b}" for a, b in new)
    gone = sorted(set(KNOWN_UPWARD) - up)
    assert not gone, f"fixed: remove these from KNOWN_UPWARD: {gone}"


#: third-party (and stdlib) modules that cost `cnet --help` start-up time (`python -X importtime`: numpy about
#: 160 ms, rich.console 40 ms, filelock 35 ms, pydantic 30 ms, multiprocessing and concurrent.futures 10 ms each,
#: torch and diffusers seconds). `import cnetcli.cli` loads none of them (checked below); a module it loads
#: imports them inside the function that needs them.
HEAVY = frozenset({
    "torch", "torchvision", "diffusers", "transformers", "accelerate", "datasets", "peft", "numpy", "PIL", "cv2",
    "safetensors", "pyarrow", "huggingface_hub", "kornia", "matplotlib", "tensorboard", "scipy", "skimage",
    "fsspec", "tokenizers", "controlnet_aux", "timm", "pydantic", "pydantic_core", "rich", "filelock",
    "multiprocessing", "concurrent",
})

#: function-level imports allowed for another reason than start-up time: (importing module, or "*" for any;
#: imported module or its package) -> why. Keep it short.
LAZY_ALLOWED: dict[tuple[str, str], str] = {
    ("*", "bitsandbytes"): "optional, not a dependency: imported where --use-8bit-adam needs it (one clear error)",
    ("*", "wandb"): "optional, not a dependency: imported where --report-to wandb needs it",
    ("*", "ray"): "optional (the `ray` extra): imported where the ray engine needs it",
    ("cnetcli.generation.models", "torch._inductor"): "importing inductor sets TORCHINDUCTOR_CACHE_DIR to its /tmp "
                                                      "default; compile_cache_dir picks cnet's folder first",
    ("cnetcli.training.launch", "torch"): "a spawned rank sets torchrun's environment (OMP_NUM_THREADS, RANK, "
                                          "CUDA_VISIBLE_DEVICES) before torch loads",
    ("cnetcli.training.launch", "cnetcli.training.loop"): "the same: the loop imports torch",
}


def _allowed(mod: str, target: str) -> bool:
    return any(m in ("*", mod) and (target == t or target.startswith(t + ".")) for m, t in LAZY_ALLOWED)


def _cli_closure() -> set[str]:
    """The cnetcli modules (and every other top-level module) `import cnetcli.cli` loads."""
    code = "import sys, json, cnetcli.cli; print(json.dumps(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(json.loads(r.stdout))


@functools.cache
def _lazy_exports(path: Path) -> dict[str, str] | None:
    """name -> module of a package that exports names lazily (a module-level `__getattr__`, PEP 562, reading a
    dict literal of "submodule" or "package.module:name" strings); None for a package without one."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if not any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body):
        return None
    out = {}
    for n in tree.body:
        if isinstance(n, (ast.Assign, ast.AnnAssign)) and isinstance(n.value, ast.Dict):
            for k, v in zip(n.value.keys, n.value.values, strict=True):
                if isinstance(k, ast.Constant) and isinstance(v, ast.Constant) and isinstance(v.value, str):
                    out[k.value] = v.value
    return out


def _loaded(mod: str, is_pkg: bool, node: ast.Import | ast.ImportFrom, mods: dict[str, Path]) -> list[str]:
    """What an import statement makes Python load: third-party modules by name, cnet modules resolved (a
    submodule, or the module a lazily exported name comes from)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        target = ".".join(base[:len(base) - (node.level - 1)] + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = []
    for a in node.names:
        lazy = _lazy_exports(mods[target]) if target in mods else None
        if f"{target}.{a.name}" in mods:
            out.append(f"{target}.{a.name}")
        elif lazy is not None and a.name in lazy:
            v = lazy[a.name]
            out.append(v.split(":")[0] if ":" in v else f"{target}.{v}")
        else:
            out.append(target)
    return out


def _split(tree: ast.Module) -> tuple[list[ast.stmt], list[tuple[ast.stmt, str]]]:
    """(the imports run when the module is imported, the ones inside functions with the function's name).
    `if TYPE_CHECKING:` blocks run never: in neither."""
    top: list[ast.stmt] = []
    inner: list[tuple[ast.stmt, str]] = []

    def walk(body: list[ast.stmt], fn: str | None) -> None:
        for n in body:
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                (top.append(n) if fn is None else inner.append((n, fn)))
            elif isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
                continue
            else:
                inside = n.name if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) else fn
                for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                    for c in getattr(n, field, []):
                        walk(c.body if isinstance(c, (ast.ExceptHandler, ast.match_case)) else [c], inside)

    walk(tree.body, None)
    return top, inner


def _module_of(name: str, mods: dict[str, Path]) -> str:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name


def heavy_pulled(mods: dict[str, Path]) -> dict[str, set[str]]:
    """cnet module -> the HEAVY libraries importing it loads (its module-level imports, transitively, and its
    parent packages')."""
    direct: dict[str, set[str]] = {}
    for m, p in mods.items():
        top, _ = _split(ast.parse(p.read_text(encoding="utf-8")))
        direct[m] = {t for n in top for t in _loaded(m, p.name == "__init__.py", n, mods)}
        direct[m] |= {".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)}
    out: dict[str, set[str]] = {}

    def visit(m: str, seen: frozenset[str]) -> set[str]:
        if m in out:
            return out[m]
        found: set[str] = set()
        for t in direct.get(m, ()):
            if t.startswith("cnetcli"):
                tm = _module_of(t, mods)
                if tm and tm != m and tm not in seen:
                    found |= visit(tm, seen | {m})
            elif t.split(".")[0] in HEAVY:
                found.add(t.split(".")[0])
        out[m] = found
        return found

    for m in mods:
        visit(m, frozenset())
    return out


def misplaced_imports(sources: dict[str, Path], closure: set[str], heavy: dict[str, set[str]]) -> list[str]:
    """Function-level imports that should be at module top: every one, except those of LAZY_ALLOWED and, in a module `import cnetcli.cli` loads, a HEAVY library or a cnet module that
    pulls one in (`heavy`)."""
    bad = []
    for mod, path in sorted(sources.items()):
        _, inner = _split(ast.parse(path.read_text(encoding="utf-8")))
        for node, fn in inner:
            for t in _loaded(mod, path.name == "__init__.py", node, sources):
                top = t.split(".")[0]
                if _allowed(mod, t):
                    continue
                if mod in closure and (heavy.get(_module_of(t, sources)) if top == "cnetcli" else top in HEAVY):
                    continue
                bad.append(f"{mod}:{node.lineno} in {fn}(): {ast.unparse(node)}")
    return bad


def test_the_import_scan_flags_what_it_should(tmp_path):
    """The rule is no stub: a light import inside a start-up module's function is flagged, a heavy one is not,
    and a module the CLI does not load keeps none inside its functions."""
    mods = _modules()
    src = tmp_path / "probe.py"  # scanned as if it were a module of the package, never imported
    src.write_text("def f():\n    import json\n    import numpy as np\n    from cnetcli.generation import generate\n"
            "    from cnetcli.generation import GenerateConfig\n    import wandb\n", encoding="utf-8")
    sources = mods | {"cnetcli.probe": src}
    heavy = heavy_pulled(sources)
    assert "numpy" in heavy["cnetcli.generation.pipeline"] and not heavy["cnetcli.errors"]
    flagged = [b.split(": ", 1)[1] for b in misplaced_imports(sources, {"cnetcli.probe"}, heavy)
               if b.startswith("cnetcli.probe:")]
    assert flagged == ["import json", "from cnetcli.generation import GenerateConfig"]
    flagged = [b.split(": ", 1)[1] for b in misplaced_imports(sources, set(), heavy) if b.startswith("cnetcli.probe:")]
    assert flagged == ["import json", "import numpy as np", "from cnetcli.generation import generate",
                       "from cnetcli.generation import GenerateConfig"]


def test_imports_sit_at_module_top():
    """#22: imports go at module top, except where the CLI's start-up needs them inside a function."""
    mods = _modules()
    bad = misplaced_imports(mods, {m for m in _cli_closure() if m.startswith("cnetcli")}, heavy_pulled(mods))
    assert not bad, "move these imports to the module's top (or, if the CLI loads the module at start-up and " \
        "the import is heavy, add the library to HEAVY):\n" + "\n".join(bad)


def test_the_cli_imports_nothing_heavy():
    """`import cnetcli.cli` (so `cnet --help`) loads no HEAVY library: no torch, diffusers, numpy, rich..."""
    loaded = sorted({m.split(".")[0] for m in _cli_closure()} & HEAVY)
    assert not loaded, f"`import cnetcli.cli` loads {loaded}"
