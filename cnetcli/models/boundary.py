"""The model-loading boundary: whatever a library raises while reading weights or configs becomes ONE line.

diffusers, transformers, torch and safetensors each fail differently on the same user mistakes (an unsafe
pickle, a corrupt or truncated file, an HTML page saved as weights, a config.json with garbage in it). Code
that loads a model wraps the call in `load_errors(...)`; what escapes is a `ModelLoadError` that names the
file or folder, what is wrong and the fix. `CnetError`s raised inside pass through unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import CnetError, ModelLoadError, first_line
from . import files

#: The one line for a pickle that `torch.load(weights_only=True)` refuses.
UNSAFE_PICKLE = ("unsafe pickle: pass --trust-pickle only if you trust the file (it needs unsafe unpickling, which "
                 "can run code; CNET_TRUST_PICKLE=1 does the same; or convert it to .safetensors)")
#: The line where no trusted path exists (components loaded by diffusers/transformers `from_pretrained`).
UNSAFE_PICKLE_REFUSED = ("unsafe pickle refused (it needs unsafe unpickling, which can run code): use its .safetensors "
                         "weights or re-save it with save_pretrained(safe_serialization=True)")
_PICKLE_REFUSAL = ("weights only load failed", "weights_only", "unsupported global", "unsafe unpickling")
_CORRUPT = ("safetensor", "headertoolarge", "invalid header", "incomplete metadata", "deserializ", "unpickling",
            "invalid load key", "pickle data was truncated", "ran out of input", "eoferror", "badzipfile",
            "pytorchstreamreader", "unable to load weights", "size mismatch")
_CONFIG = ("jsondecodeerror", "not a valid json", "expecting value", "expecting property name", "must be", "should be", "negative",
           "invalid literal", "unexpected keyword", "divisible", "typeerror", "validation error", "must be a mapping")


def is_pickle_refusal(e: BaseException) -> bool:
    chain = [e]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
        if len(chain) > 8:
            break
    return any(any(n in str(x).lower() for n in _PICKLE_REFUSAL) for x in chain)


def redownload(source: str | None) -> str:
    """The fix for a damaged file: where to get it again."""
    if source and source.count("/") == 1 and not os.path.exists(source):
        return f"download it again (`hf download {source} --force-download`)"
    return "download it again"


def check_file(path: str | os.PathLike, source: str | None = None) -> None:
    """Raise the one-line ModelLoadError when `path` is not a usable weight file (see `files.problem`)."""
    why = files.problem(path)
    if why:
        raise ModelLoadError(f"{path}: corrupt weight file: {why}; {redownload(source)}")


def check_folder(folder: str | os.PathLike, source: str | None = None) -> None:
    """`check_file` for every weight file directly inside `folder` (header reads only)."""
    d = Path(folder)
    if not d.is_dir():
        return
    for p in sorted(d.iterdir()):
        if p.is_file() and files.is_weight_file(p):
            check_file(p, source)


def describe(e: BaseException) -> str:
    """What kind of failure a library exception is, as a short phrase plus the library's own first line."""
    if is_pickle_refusal(e):
        return UNSAFE_PICKLE
    msg = first_line(e)
    low = f"{type(e).__name__} {msg}".lower()
    if any(n in low for n in _CORRUPT):
        return f"corrupt or incomplete weights ({msg})"
    if any(n in low for n in _CONFIG):
        return f"invalid configuration ({msg})"
    return msg


@contextlib.contextmanager
def load_errors(where: str | os.PathLike, what: str, source: str | None = None, hint: str = "") -> Iterator[None]:
    """Turn any library exception raised inside into one ModelLoadError naming `where` and the fix."""
    try:
        yield
    except CnetError:
        raise
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:
        raise load_error(where, what, e, source, hint) from None


def load_error(where: str | os.PathLike, what: str, e: BaseException, source: str | None = None,
               hint: str = "", trust_pickle_flag: bool = False) -> ModelLoadError:
    """One line for a library failure. `trust_pickle_flag`: the caller offers --trust-pickle for this load."""
    d = describe(e)
    if d == UNSAFE_PICKLE:
        return ModelLoadError(f"{where}: cannot load {what}: {d if trust_pickle_flag else UNSAFE_PICKLE_REFUSED}")
    fix = redownload(source) if d.startswith("corrupt") else \
        (hint or "fix or re-download its config") if d.startswith("invalid configuration") else hint
    return ModelLoadError(f"{where}: cannot load {what}: {d}" + (f"; {fix}" if fix else ""))
