"""The weights manager: where a weight file comes from, safe loading, hashes.

Which files each model-backed hint type needs is the hint registry's (each `HintType.weights`, gathered by
`annotators/catalogue.py`, which `cnet weights list|pull|verify` reads); this module knows single files.

A weight is found, in this order, in
1. a local folder: the `weights_dir` argument (`--weights-dir`) or `CNET_WEIGHTS_DIR` (`<dir>/<filename>`;
   a transformers model as `<dir>/<repo name>/` holding `config.json`),
2. the Hugging Face cache (`hf_hub_download(..., local_files_only=True)`),
3. the hub itself, only when online (`HF_HUB_OFFLINE=1` or `offline=True` forbids it).
Otherwise one `MissingWeightsError` names the file, the repo it comes from and where to put it.

Loading never runs arbitrary pickle code by default: safetensors first (a `<stem>.safetensors` next to a
`.pth` wins), else `torch.load(weights_only=True)`; a checkpoint that needs more is refused with a
`ModelLoadError` unless `trust_pickle=True` (`--trust-pickle`, or `CNET_TRUST_PICKLE=1`).

Hashes: the HF cache stores LFS files under their sha256, so a cached file is verified against its blob
name; `pull` records the sha256 of each file it fetches in `<weights dir>/cnet-weights.json` (and
`verify` checks local files against the published sizes and sha256 in `KNOWN_FILES`, else that manifest, else
the HF cache's blob name; a file none of these covers is reported as unverified, never as ok).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MissingWeightsError, ModelLoadError, SchemaError, first_line
from ..fsguard import atomic_write_text, sha256_of
from . import boundary
from . import files as weight_files
from .hub import download_command, is_offline

#: Where ControlNet 1.1's annotator checkpoints live (the repository controlnet_aux downloads from).
ANNOTATORS_REPO = "lllyasviel/Annotators"
#: File name of the manifest of hashes recorded by `pull` / `record_hashes` inside a weights folder.
MANIFEST_NAME = "cnet-weights.json"


@dataclass(frozen=True)
class KnownFile:
    """A published weight file's exact size and sha256, as the hub's git-lfs pointer for it states."""

    size: int
    sha256: str


#: The annotator weight files' published sizes and sha256, copied from the git-lfs pointers (`oid sha256:...`,
#: `size ...`) that the Hugging Face hub shows for each file; only values read there are recorded.
KNOWN_FILES: dict[str, KnownFile] = {
    # lllyasviel/Annotators commit 733558a "Upload 7 files" (pointer diffs; also shown, same oid, in the
    # Zedge/lllyasviel-Annotators mirror of that commit)
    "body_pose_model.pth": KnownFile(209267595, "25a948c16078b0f08e236bda51a385d855ef4c153598947c28c0d47ed94bb746"),
    "hand_pose_model.pth": KnownFile(147341049, "b76b00d1750901abd07b9f9d8c98cc3385b8fe834a26d4b4f0aad439e75fc600"),
    "dpt_hybrid-midas-501f0c75.pt": KnownFile(492757791,
                                              "501f0c75b3bca7daec6b3682c5054c09b366765aef6fa3a09d03a5cb4b230853"),
    "mlsd_large_512_fp32.pth": KnownFile(6341481, "5696f168eb2c30d4374bbfd45436f7415bb4d88da29bea97eea0101520fba082"),
    # lllyasviel/Annotators blob page table5_pidinet.pth (SHA256 80860ac2..., 2.87 MB); the exact size from the
    # pointer of the same oid in TencentARC/T2I-Adapter commit fa7bf21 (third-party-models/table5_pidinet.pth)
    "table5_pidinet.pth": KnownFile(2871148, "80860ac267258b5f27486e0ef152a211d0b08120f62aeb185a050acc30da486c"),
    # lllyasviel/Annotators commit 03b402e "Upload facenet.pth"
    "facenet.pth": KnownFile(153718792, "8beb52e548624ffcc4aed12af7aee7dcbfaeea420c75609fee999fe7add79d43"),
    # lllyasviel/Annotators blame/main/ControlNetHED.pth (pointer of commit 9cf9fa9)
    "ControlNetHED.pth": KnownFile(29444406, "5ca93762ffd68a29fee1af9d495bf6aab80ae86f08905fb35472a083a4c7a8fa"),
    # lllyasviel/Annotators commit 1e70a29 "Upload scannet.pt"
    "scannet.pt": KnownFile(290767728, "03dbf1600c51ee3d45c29f77b77bf1a3b7a24c3452dba62a4ae658f37330c209"),
}
#: sha256 of the published files (the same facts as KNOWN_FILES, by name).
KNOWN_SHA256: dict[str, str] = {name: k.sha256 for name, k in KNOWN_FILES.items()}


@dataclass(frozen=True)
class WeightFile:
    """One file (kind="file") or one transformers model repo (kind="model") a hint type may need."""

    name: str  # file name inside `repo`, or the repo id itself for kind="model"
    repo: str = ANNOTATORS_REPO
    kind: str = "file"  # "file" | "model"
    when: str = ""  # the option that needs it ("" = always), e.g. "hands=true"

    @property
    def required(self) -> bool:
        """Needed with the type's default settings."""
        return not self.when or "(default)" in self.when

    @property
    def label(self) -> str:
        return self.name if self.kind == "file" else f"{self.name} (transformers model)"


def weights_root(weights_dir: str | os.PathLike | None = None) -> Path | None:
    d = weights_dir if weights_dir not in (None, "") else os.environ.get("CNET_WEIGHTS_DIR") or None
    return Path(d).expanduser() if d else None


def trust_pickle_default(trust_pickle: bool | None = None) -> bool:
    if trust_pickle is not None:
        return trust_pickle
    return os.environ.get("CNET_TRUST_PICKLE", "").lower() in ("1", "true", "yes", "on")


def _where_hint(f: WeightFile, root: Path | None, for_type: str | None) -> str:
    put = f"{root}/{f.name if f.kind == 'file' else f.name.split('/')[-1] + '/'}" if root else (
        f"<dir>/{f.name if f.kind == 'file' else f.name.split('/')[-1] + '/'} with --weights-dir/CNET_WEIGHTS_DIR")
    pull = f"`cnet weights pull {for_type}`" if for_type else download_command(f.repo)
    what = f"{f.name} (from hub repo {f.repo})" if f.kind == "file" else f"transformers model {f.name} (hub)"
    return f"missing weight {what}: run {pull} while online, or put it at {put}"


def redownload_hint(f: WeightFile, for_type: str, path: str | os.PathLike | None = None) -> str:
    """How to get a damaged weight file of hint type `for_type` again."""
    return (f"delete {path or 'it'} and run `cnet weights pull {for_type}` (or download {f.name} from hub repo "
            f"{f.repo})")


def _local_candidate(f: WeightFile, root: Path | None) -> Path | None:
    if root is None:
        return None
    if f.kind == "file":
        p = root / f.name
        return p if p.is_file() else None
    for cand in (root / f.name.split("/")[-1], root / f.name.replace("/", "--"), root / f.name):
        if (cand / "config.json").is_file():
            return cand
    return None


def _from_cache(f: WeightFile) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    fname = f.name if f.kind == "file" else "config.json"
    try:
        hit = try_to_load_from_cache(f.repo, fname)
    except Exception:
        return None
    if isinstance(hit, str) and os.path.isfile(hit):
        return Path(hit) if f.kind == "file" else Path(hit).parent
    return None


def locate(f: WeightFile, weights_dir: str | os.PathLike | None = None) -> Path | None:
    """Where the weight is locally (weights folder, then HF cache), or None. Never downloads."""
    return _local_candidate(f, weights_root(weights_dir)) or _from_cache(f)


def resolve(f: WeightFile, weights_dir: str | os.PathLike | None = None, offline: bool | None = None,
            for_type: str | None = None) -> Path:
    """Path to a weight file (or model folder), downloading into the HF cache only when online."""
    root = weights_root(weights_dir)
    hit = locate(f, weights_dir)
    if hit is not None:
        return hit
    if not is_offline(offline):
        try:
            return download(f)
        except MissingWeightsError:
            pass
    raise MissingWeightsError(_where_hint(f, root, for_type))


def download(f: WeightFile, into: Path | None = None) -> Path:
    """Fetch one weight (online) into the folder `into` (a model repo as its own subfolder), else the HF cache.
    Raises MissingWeightsError when it cannot."""
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if into is not None:
            into.mkdir(parents=True, exist_ok=True)
        if f.kind == "file":
            return Path(hf_hub_download(f.repo, f.name, local_dir=None if into is None else str(into)))
        return Path(snapshot_download(f.repo, local_dir=None if into is None else str(into / f.name.split("/")[-1])))
    except Exception as e:  # network down, repo gone, auth: one line
        raise MissingWeightsError(f"cannot download {f.name} from hub repo {f.repo}: {first_line(e, 200)}") from None


# ---------------------------------------------------------------------------------------------- loading


def load_state_dict(path: str | os.PathLike, trust_pickle: bool | None = None, *,
                    fix: str = "download it again") -> dict[str, Any]:
    """Load a checkpoint safely: safetensors, else `torch.load(weights_only=True)`.

    A pickle that needs globals beyond tensors/containers is refused unless `trust_pickle` (or
    `CNET_TRUST_PICKLE=1`). Common wrappers ({"state_dict": ...}, {"model": ...}) are returned as stored;
    use `unwrap` to take them apart. `fix`: how to get a damaged file again (`redownload_hint` for an
    annotator's file)."""
    import torch


    p = Path(path)
    sib = p.with_suffix(".safetensors")
    if p.suffix != ".safetensors" and sib.is_file():
        p = sib
    if not p.is_file():
        raise MissingWeightsError(f"{p}: no such weight file")
    why = weight_files.problem(p)  # empty, HTML page, git-lfs pointer, truncated: named, never sent to --trust-pickle
    if why:
        raise ModelLoadError(f"{p}: corrupt weight file: {why}; {fix}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as e:
            raise ModelLoadError(f"{p}: corrupt weight file: not a valid safetensors file "
                                 f"({boundary.first_line(e, 120)}); {fix}") from None
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not boundary.is_pickle_refusal(e):
            raise ModelLoadError(f"{p}: corrupt weight file ({boundary.first_line(e, 120)}); {fix}") from None
        if not trust_pickle_default(trust_pickle):
            raise ModelLoadError(f"{p}: {boundary.UNSAFE_PICKLE}") from None
        try:
            return torch.load(str(p), map_location="cpu", weights_only=False)
        except Exception as e2:
            raise ModelLoadError(f"{p}: cannot load checkpoint ({boundary.first_line(e2, 120)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ModelLoadError(f"{p}: corrupt weight file ({boundary.first_line(e, 120)}); {fix}") from None


def unwrap(sd: Any, *keys: str) -> dict[str, Any]:
    """Take `sd[key]` for the first wrapper key present and strip a DataParallel `module.` prefix."""
    if isinstance(sd, dict):
        for k in keys:
            if k in sd and isinstance(sd[k], dict):
                sd = sd[k]
                break
    if not isinstance(sd, dict):
        raise ModelLoadError(f"checkpoint is not a state dict (got {type(sd).__name__})")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def load_into(module: Any, path: str | os.PathLike, *, keys: tuple[str, ...] = ("state_dict", "model"),
              trust_pickle: bool | None = None, transform: Any = None, fix: str = "download it again") -> Any:
    """Load a checkpoint file into `module` strictly; a mismatch is a one-line ModelLoadError.

    `module` may be a zero-argument factory: the network is then built on the meta device (no random
    initialisation, which costs seconds for ViT-sized models) and the tensors are assigned from the file;
    if anything stays on meta (a buffer not stored in the file), it is rebuilt normally. `fix`: as for
    `load_state_dict`."""
    import torch

    sd = unwrap(load_state_dict(path, trust_pickle, fix=fix), *keys)
    factory = None
    if not isinstance(module, torch.nn.Module):
        factory = module
        with torch.device("meta"):
            module = factory()
    if transform is not None:
        sd = transform(module, sd)  # (module, state dict) -> state dict
    try:
        module.load_state_dict(sd, strict=True, assign=factory is not None)
    except (RuntimeError, KeyError) as e:
        raise ModelLoadError(f"{path}: weights do not match the {type(module).__name__} architecture "
                             f"({first_line(e)})") from None
    if factory is not None and any(t.is_meta for t in list(module.parameters()) + list(module.buffers())):
        module = factory()
        module.load_state_dict(sd, strict=True)
    return module.eval()


# ---------------------------------------------------------------------------------------------- hashes

_HASH_CACHE: dict[tuple[str, int, float], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file, cached per (path, size, mtime) for this process."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = sha256_of(p)
    return _HASH_CACHE[key]


def dir_size(p: Path) -> int:
    return sum(q.stat().st_size for q in p.rglob("*") if q.is_file()) if p.is_dir() else p.stat().st_size


def read_manifest(root: Path | None) -> dict[str, str]:
    if root is None or not (root / MANIFEST_NAME).is_file():
        return {}
    from ..external import read_json

    try:
        data = read_json(root / MANIFEST_NAME)
    except SchemaError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def record_hashes(root: str | os.PathLike, names: list[str]) -> dict[str, str]:
    """Hash the named weight files of a weights folder (those present) into its manifest (`cnet-weights.json`)."""
    r = Path(root)
    manifest = read_manifest(r)
    for f in sorted(set(names)):
        if (r / f).is_file():
            manifest[f] = sha256_file(r / f)
    atomic_write_text(r / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def expected_sha256(f: WeightFile, path: Path | None, root: Path | None) -> str | None:
    """The sha256 a weight file at `path` should have: published, else recorded by `pull`, else the HF cache's
    blob name; None when nothing vouches for it."""
    if f.kind != "file" or path is None:
        return None
    if f.name in KNOWN_SHA256:
        return KNOWN_SHA256[f.name]
    m = read_manifest(root)
    if f.name in m and root is not None and path.parent == root:
        return m[f.name]
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", real.name):
        return real.name  # the HF cache names LFS blobs by their sha256
    return None


def read_state_dict(path: str | os.PathLike, trust_pickle: bool | None = None) -> dict[str, Any]:
    """A single file's tensors (safetensors, else a weights-only torch.load), unwrapped from {"state_dict": ...}."""
    sd = load_state_dict(path, trust_pickle)  # checks the file first (empty, HTML, truncated: named corrupt)
    try:
        return unwrap(sd, "state_dict", "model", "module")
    except ModelLoadError:
        raise ModelLoadError(f"{path}: not a ControlNet checkpoint (it holds no state dict)") from None


def read_shapes(path: str | os.PathLike, trust_pickle: bool | None = None) -> dict[str, Any]:
    """The file's tensors as meta tensors of the right shapes: a safetensors header read (no weights), or
    the whole pickle for `.pth`/`.ckpt` (a pickle has no header)."""
    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        sd = read_state_dict(p, trust_pickle)
        return {k: v for k, v in sd.items() if hasattr(v, "shape")}
    import torch
    from safetensors import safe_open

    boundary.check_file(p)
    with boundary.load_errors(p, "ControlNet", hint="download it again"), safe_open(str(p), "pt") as f:
        return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
