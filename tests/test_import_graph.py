"""The import graph of cnetcli: no modules import each other in a loop, no import runs up the layers, and
imports sit at module top except where the CLI's start-up needs them inside a function.

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
    """What an import statement makes Python load: other modules by name, cnet modules resolved
    (``from pkg import sub`` -> ``pkg.sub``; a lazily exported name -> the module it comes from; ``import
    cnetcli.x.y`` of a name inside a module -> that module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = mod.split(".") if is_pkg else mod.split(".")[:-1]
            target = ".".join(base[:len(base) - (node.level - 1)] + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        lazy = _lazy_exports(mods[target]) if target in mods and mods[target].name == "__init__.py" else None
        names = []
        for a in node.names:
            if lazy is not None and a.name in lazy:
                v = lazy[a.name]
                names.append(v.split(":")[0] if ":" in v else f"{target}.{v}")
            else:
                names.append(f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target)
    return [_module_of(n, mods) if n.startswith("cnetcli") else n for n in names]


def _module_of(name: str, mods: dict[str, Path]) -> str:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(t for t in _loaded(mod, path.name == "__init__.py", node, mods) if t.startswith("cnetcli"))
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
    assert _loaded("cnetcli.data.tables", False, node, mods) == ["cnetcli.data.read"]


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
#: torch and diffusers seconds). `import cnetcli.cli` loads none of them (checked below).
HEAVY = frozenset({
    "torch", "torchvision", "diffusers", "transformers", "accelerate", "datasets", "peft", "numpy", "PIL", "cv2",
    "safetensors", "pyarrow", "huggingface_hub", "kornia", "matplotlib", "tensorboard", "scipy", "skimage",
    "fsspec", "tokenizers", "controlnet_aux", "timm", "pydantic", "pydantic_core", "rich", "filelock",
    "multiprocessing", "concurrent",
})
#: the libraries a command's input checks must not load: they refuse bad input before these are imported
TORCH = frozenset({"torch", "torchvision", "diffusers", "transformers", "accelerate", "peft"})
assert TORCH <= HEAVY

#: what a command loads after parsing to check its input before the libraries (generate's `preflight`, train's
#: `check_inputs`; tests/test_generate_preflight.py and test_offline.py time the refusals)
PREFLIGHT = ("cnetcli.generation.pipeline", "cnetcli.training.inputs")

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


@functools.cache
def _start_up() -> tuple[frozenset[str], frozenset[str]]:
    """(every module `import cnetcli.cli` loads, and with the PREFLIGHT modules too)."""
    code = ("import sys, json, importlib, cnetcli.cli; cli = sorted(sys.modules); "
            f"[importlib.import_module(m) for m in {PREFLIGHT!r}]; print(json.dumps([cli, sorted(sys.modules)]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    cli, pre = json.loads(r.stdout)
    return frozenset(cli), frozenset(pre)


def _function_imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    """The imports inside functions (at any depth), each with its function's name."""
    return [(n, fn.name) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in _own_imports(fn)]


def _own_imports(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.Import | ast.ImportFrom]:
    """The imports of `fn`'s body, not those of functions defined inside it (they are listed under their own)."""
    out, todo = [], list(fn.body)
    while todo:
        n = todo.pop()
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            out.append(n)
        elif not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(n))
    return sorted(out, key=lambda n: n.lineno)


def misplaced_imports(sources: dict[str, Path], cli: set[str], preflight: set[str]) -> list[str]:
    """Function-level imports that belong at the module's top. Kept inside a function are only those of
    LAZY_ALLOWED and, in a module the CLI loads at start-up (`cli`) or a command loads to check its input
    (`preflight`), the imports that would make that step load more: a HEAVY library, or a cnet module it does
    not load yet."""
    bad = []
    for mod, path in sorted(sources.items()):
        loads = cli if mod in cli else preflight if mod in preflight else None
        for node, fn in _function_imports(ast.parse(path.read_text(encoding="utf-8"))):
            for t in _loaded(mod, path.name == "__init__.py", node, sources):
                top = t.split(".")[0]
                if _allowed(mod, t) or loads is not None and (t not in loads if top == "cnetcli" else top in HEAVY):
                    continue
                bad.append(f"{mod}:{node.lineno} in {fn}(): {ast.unparse(node)}")
    return bad


def test_the_import_scan_flags_what_it_should(tmp_path):
    """The rule is no stub: a light import inside a start-up module's function is flagged, a heavy one is not,
    and a module the CLI does not load keeps none inside its functions."""
    src = tmp_path / "probe.py"  # scanned as if it were a module of the package, never imported
    src.write_text("def f():\n    import json\n    import numpy as np\n    from cnetcli.generation import generate\n"
                   "    from cnetcli.generation import CONTROL_MODES\n    import wandb\n\n    def g():\n"
                   "        import torch\n", encoding="utf-8")
    sources = _modules() | {"cnetcli.probe": src}
    cli = {"cnetcli", "cnetcli.probe", "cnetcli.generation", "cnetcli.generation.control"}
    flagged = [b.split(": ", 1)[1] for b in misplaced_imports(sources, cli, cli) if b.startswith("cnetcli.probe:")]
    assert flagged == ["import json", "from cnetcli.generation import CONTROL_MODES"]
    flagged = [b.split(": ", 1)[1] for b in misplaced_imports(sources, set(), set()) if b.startswith("cnetcli.probe:")]
    assert flagged == ["import json", "import numpy as np", "from cnetcli.generation import generate",
                       "from cnetcli.generation import CONTROL_MODES", "import torch"]


def test_imports_sit_at_module_top():
    """#22: imports go at module top, except where the CLI's start-up and input checks need them inside a
    function (see `misplaced_imports`)."""
    cli, preflight = _start_up()
    bad = misplaced_imports(_modules(), {m for m in cli if m.startswith("cnetcli")},
                            {m for m in preflight if m.startswith("cnetcli")})
    assert not bad, "move these imports to the module's top:\n" + "\n".join(bad)


def test_the_cli_imports_nothing_heavy():
    """`import cnetcli.cli` (so `cnet --help`) loads no HEAVY library (no torch, diffusers, numpy, rich...), and
    the input checks of the PREFLIGHT modules none of TORCH."""
    cli, preflight = ({m.split(".")[0] for m in loaded} for loaded in _start_up())
    assert not cli & HEAVY, f"`import cnetcli.cli` loads {sorted(cli & HEAVY)}"
    assert not preflight & TORCH, f"the input checks load {sorted(preflight & TORCH)}"
