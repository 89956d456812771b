"""Fixtures of the hostile corpus (the harness is in harness.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def sd8(tmp_path_factory):
    """A tiny SD whose VAE downsamples 8x like SD's (so ControlNet's hint encoder fits), for `cnet train`."""
    from cnetcli.models.tiny import save_sd_folder, tiny_sd_components

    d = tmp_path_factory.mktemp("hostile-sd8")
    save_sd_folder(tiny_sd_components(seed=0, vae_channels=(8, 16, 16, 16), words=("red", "blue", "circle")), d)
    return d
