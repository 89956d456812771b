"""Is the model hub usable, and what to tell a user when it is not (#23.3). Standard library only.

`is_offline(offline)`: an explicit `--offline/--online`, else `HF_HUB_OFFLINE`, else one quick TCP connect to the
hub (`HF_ENDPOINT`, or the HTTPS proxy when one is set) with a short timeout (`CNET_HUB_TIMEOUT`, 3 s), made once
per process and only when a hub id is about to be used. Without it, huggingface_hub retries an unreachable hub
for over a minute per file before it gives up. When the hub is unreachable, `HF_HUB_OFFLINE=1` is set for the
rest of the process so that the libraries (huggingface_hub, transformers, datasets) fail at once too.

The fix named in messages is `hf download REPO` (huggingface_hub 1.x and 2.x ship `hf`; `huggingface-cli` is gone).
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlsplit

_TRUE = ("1", "true", "yes", "on")
DEFAULT_TIMEOUT_S = 3.0
#: the one probe result of this process: None until a hub id is used online; why it failed
_reachable: bool | None = None
_why = ""


def offline_by_setting() -> bool:
    """`HF_HUB_OFFLINE` (or the older `TRANSFORMERS_OFFLINE`) is set."""
    return any(os.environ.get(v, "").lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _target() -> tuple[str, int]:
    """The host:port a hub request connects to first: the HTTPS proxy when one is set, else the endpoint."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlsplit(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def _timeout() -> float:
    try:
        return max(0.1, float(os.environ.get("CNET_HUB_TIMEOUT", DEFAULT_TIMEOUT_S)))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def hub_reachable() -> bool:
    """One TCP connect to the hub (name lookup included) within `CNET_HUB_TIMEOUT` seconds; the answer is kept."""
    global _reachable, _why
    if _reachable is None:
        host, port = _target()
        try:
            socket.create_connection((host, port), timeout=_timeout()).close()
            _reachable = True
        except socket.gaierror:
            _reachable, _why = False, f"{host} has no address: no network or no DNS"
        except TimeoutError:
            _reachable, _why = False, f"{host}:{port} did not answer within {_timeout():g} s"
        except OSError as e:  # no route, refused
            _reachable, _why = False, f"{host}:{port}: {e.strerror or e}"
        if not _reachable:
            _go_offline()
    return _reachable


def _go_offline() -> None:
    """The hub is unreachable: let every library know, so none of them retries."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # imported already: it read the variable at import
        constants.HF_HUB_OFFLINE = True


def is_offline(offline: bool | None = None) -> bool:
    """Whether the hub must not (flag, `HF_HUB_OFFLINE`) or cannot (the probe) be used."""
    if offline is not None:
        return offline
    return offline_by_setting() or not hub_reachable()


def unreachable() -> bool:
    """The probe ran in this process and found the hub unreachable."""
    return _reachable is False


def download_command(repo: str, repo_type: str | None = None) -> str:
    return f"`hf download {'--repo-type ' + repo_type + ' ' if repo_type else ''}{repo}`"


def offline_fix(repo: str, repo_type: str | None = None) -> str:
    """Why the hub cannot give `repo` (not in the HF cache) and the fix: "(why): fix"."""
    if unreachable():
        return (f"(not in the HF cache, and the model hub is unreachable: {_why}): download it where there is a "
                f"network with {download_command(repo, repo_type)} (into the HF cache), then run with "
                "HF_HUB_OFFLINE=1 to skip the hub check")
    return (f"(not in the HF cache, and HF_HUB_OFFLINE=1 or --offline): download it with "
            f"{download_command(repo, repo_type)} while online")
