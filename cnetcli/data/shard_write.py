"""Writing WebDataset shards: ``NNNNN.tar`` files of samples ``<key>.<ext>``, each shard atomic, and a manifest.

A shard is written to a temp file and renamed when complete, with a sidecar ``NNNNN.json`` (sample count,
size, sha256, and whatever the caller records, e.g. the annotator's provenance) written after it: a shard
with its sidecar is finished, so a resumed writer skips it. ``manifest.json`` lists every finished shard
(rebuilt from the sidecars, so several processes writing their own shards into one folder can each
rewrite it; the last to finish leaves the full list). Tar members are written with fixed metadata
(mtime 0, uid/gid 0, mode 0644), so the same samples give byte-identical shards.

    with ShardWriter("out", shard=3) as w:
        w.add("000000030", {"jpg": b"...", "conditioning_image.png": b"...", "txt": b"a cat"})
    write_manifest("out", extra={"annotator": {...}})
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

from ..external import read_json
from ..fsguard import atomic_write_text, sha256_of

MANIFEST = "manifest.json"
FORMAT = "cnet-webdataset-1"


def shard_name(i: int) -> str:
    return f"{i:05d}.tar"


def is_finished(root: str | os.PathLike, i: int) -> bool:
    """Shard `i` and its sidecar both exist (the sidecar is written after the shard's rename)."""
    p = Path(root) / shard_name(i)
    return p.is_file() and p.with_suffix(".json").is_file()



class ShardWriter:
    """Writes one shard: `add` samples, then `close` (rename + sidecar); a writer left unclosed (an error)
    leaves no shard."""

    def __init__(self, root: str | os.PathLike, shard: int, record: dict[str, Any] | None = None) -> None:
        self.root, self.index = Path(root), shard
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / shard_name(shard)
        self.tmp = self.root / f".{shard_name(shard)}.{os.getpid()}.tmp"
        self.record = dict(record or {})
        self.count = 0
        self._tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)

    def add(self, key: str, members: dict[str, bytes]) -> None:
        """One sample: `members` maps an extension (``jpg``, ``conditioning_image.png``, ``txt``) to bytes."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not hold '.' or '/' (WebDataset splits the name there)")
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> dict[str, Any]:
        """Finish the shard; returns its sidecar record."""
        self._tar.close()
        os.replace(self.tmp, self.path)
        side = {"shard": self.path.name, "count": self.count, "size": self.path.stat().st_size,
                "sha256": sha256_of(self.path)} | self.record
        atomic_write_text(self.path.with_suffix(".json"), json.dumps(side, indent=1))
        return side

    def abort(self) -> None:
        self._tar.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: Any, *rest: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def write_manifest(root: str | os.PathLike, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``manifest.json`` from the finished shards' sidecars: format, totals, and one row per shard."""
    root = Path(root)
    rows = []
    for side in sorted(root.glob("[0-9]*.json")):
        if (root / side.with_suffix(".tar").name).is_file():
            rows.append(read_json(side))  # this run's own sidecars, read bounded all the same
    manifest = {"format": FORMAT, "shards": len(rows), "samples": sum(r["count"] for r in rows)} | (extra or {}) \
        | {"files": rows}
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1))
    return manifest
