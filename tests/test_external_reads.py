"""Every call site in cnetcli/ that reads external data goes through the schema layer (`cnetcli.external`).

The source is scanned (ast) for the calls that parse bytes from outside: json.load(s), tomllib/tomli,
csv readers, parquet/arrow readers, safetensors readers, pydantic-core's from_json, binary headers
(int.from_bytes), PNG text chunks (`.text`/`.info` of an image) and the launcher's environment variables. A
site is allowed only inside the layer's own modules, or when it is listed in SITES below with why it is safe
(a library that bounds its own parse, or a file whose bytes were verified first). A new site elsewhere fails
this test: route it through `cnetcli.external` (read_json, parse_json, parse_toml, validate, ...) or, if it
truly is safe, add it here with the reason.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "cnetcli"
#: The schema layer itself: where parsing of outside bytes lives.
LAYER = ("external/",)
#: (module, enclosing function, what) -> why this site is safe without the layer.
SITES: dict[tuple[str, str, str], str] = {
    ("images.py", "read_png_text", "png-text"): "returns the chunk's text; every caller parses it with the layer",
    ("generation/infotext.py", "settings_from_png", "png-text"):
        "the chunks go to external.parse_json / parse_parameters + records.Infotext*",
    ("training/checkpoint.py", "load_checkpoint", "safetensors"): "after verify(): sizes and sha256 match the manifest",
    ("training/checkpoint.py", "_load_weights", "safetensors"): "after verify() (checkpoints) or models.files.problem()",
    ("training/disk.py", "_header_params", "safetensors"):
        "an estimate only (any error -> None); safetensors' own parser bounds its header",
    ("training/cache.py", "_load", "safetensors"): "cnet's own latent cache: any error or missing key -> rebuilt",
    ("training/cache.py", "load_or_build", "safetensors"): "the parts this run's own processes just wrote",
    ("training/cache.py", "undecodable", "safetensors"): "the metadata of cnet's own cache that _load just read",
    ("training/shard_cache.py", "items", "safetensors"):
        "after shard_cache.read_skips(): external.safetensors.read_header checked the header against the file",
    ("models/weights.py", "load_state_dict", "safetensors"):
        "after models.files.problem(): external.safetensors.read_header checked the header against the file",
    ("models/weights.py", "read_shapes", "safetensors"):
        "after models.files.problem(): external.safetensors.read_header checked the header against the file",
    ("models/families/flow_files.py", "load_controlnet_file", "safetensors"):
        "after models.controlnet.read_shapes() -> boundary.check_file(): the header checked against the file",
    ("models/families/flux.py", "controlnet_file_config", "safetensors"): "as flow_files.load_controlnet_file",
    ("models/families/sd3.py", "controlnet_file_config", "safetensors"): "as flow_files.load_controlnet_file",
    ("models/families/zimage.py", "controlnet_file_config", "safetensors"): "as flow_files.load_controlnet_file",
    ("models/families/zimage.py", "load_controlnet_file", "safetensors"): "as flow_files.load_controlnet_file",
    ("data/read.py", "_records", "csv"): "each row's cells are checked field by field (data.read.resolve) and counted",
}

_JSON = {("json", "load"), ("json", "loads")}
_TOML = {("tomllib", "load"), ("tomllib", "loads"), ("tomli", "load"), ("tomli", "loads")}
_CSV = {("csv", "reader"), ("csv", "DictReader")}
_NAMES = {"safe_open": "safetensors", "load_file": "safetensors", "from_json": "from_json",
          "read_table": "parquet", "ParquetFile": "parquet", "read_csv": "csv", "read_parquet": "parquet"}
_ENV = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
        "PMI_RANK", "PMI_SIZE", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"}


def _kind(node: ast.AST) -> str | None:
    """What external read `node` is, or None."""
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            pair = (f.value.id, f.attr)
            if pair in _JSON:
                return "json"
            if pair in _TOML:
                return "toml"
            if pair in _CSV:
                return "csv"
            if pair == ("int", "from_bytes"):
                return "binary-header"
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        if name in _NAMES:
            return _NAMES[name]
        if isinstance(f, ast.Name) and f.id == "getattr" and len(node.args) >= 2 and \
                isinstance(node.args[1], ast.Constant) and node.args[1].value == "text":
            return "png-text"
        if isinstance(f, ast.Attribute) and f.attr == "get" and isinstance(f.value, ast.Attribute) and \
                f.value.attr in ("text", "info") and isinstance(f.value.value, ast.Name) and \
                f.value.value.id in ("img", "im", "image", "pil"):
            return "png-text"
    if isinstance(node, (ast.Call, ast.Subscript)):  # os.environ["RANK"], os.environ.get("WORLD_SIZE")
        arg = node.slice if isinstance(node, ast.Subscript) else (node.args[0] if node.args else None)
        target = node.value if isinstance(node, ast.Subscript) else node.func
        if isinstance(arg, ast.Constant) and arg.value in _ENV and "environ" in ast.unparse(target) and \
                isinstance(getattr(node, "ctx", ast.Load()), ast.Load):
            return "env"
    return None


@functools.cache
def external_reads() -> tuple[tuple[str, str, str, int], ...]:
    """(module, enclosing function, kind, line) of every external read in cnetcli/."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] + [tree]:
            body = fn.body if not isinstance(fn, ast.Module) else [n for n in fn.body if not isinstance(
                n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
            name = getattr(fn, "name", "<module>")
            for stmt in body:
                for node in _walk_own(stmt):
                    kind = _kind(node)
                    if kind is not None:
                        found.append((rel, name, kind, node.lineno))
    return tuple(found)


def _walk_own(node: ast.AST):
    """ast.walk without descending into nested functions (they are scanned as their own scope)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk_own(child)


def test_the_scanner_finds_the_layer_and_the_listed_sites():
    found = {(m, f, k) for m, f, k, _ in external_reads()}
    assert ("external/reader.py", "parse_json", "from_json") in found
    assert ("external/reader.py", "parse_toml", "toml") in found
    stale = sorted(set(SITES) - found)
    assert not stale, f"SITES lists reads that are gone (remove them): {stale}"


def test_every_external_read_goes_through_the_schema_layer():
    bypass = [f"cnetcli/{m}:{line} in {f}(): {k}" for m, f, k, line in external_reads()
              if not m.startswith(LAYER) and (m, f, k) not in SITES]
    assert not bypass, ("external data read outside cnetcli/external (parse it with cnetcli.external, or list the "
                        "site in SITES with why it is safe):\n" + "\n".join(bypass))


@pytest.mark.parametrize("src, kind", [
    ("json.loads(x)", "json"), ("tomllib.loads(t)", "toml"), ("csv.DictReader(f)", "csv"),
    ("safe_open(p, 'pt')", "safetensors"), ("int.from_bytes(b, 'little')", "binary-header"),
    ("img.text.get('cnet')", "png-text"), ("os.environ['WORLD_SIZE']", "env"),
    ("os.environ.get('RANK', '0')", "env"), ("pq.read_table(p)", "parquet"),
])
def test_the_scanner_sees_each_kind_of_read(src, kind):
    node = ast.parse(src, mode="eval").body
    assert _kind(node) == kind
