"""Issue #24.2: a ControlNet whose weights hold NaN/Inf is refused when it loads, in one line naming the file
(it would otherwise render black images with exit 0)."""

from __future__ import annotations

import pytest

from cnetcli.errors import ModelLoadError


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nonfinite_controlnet_weights_are_refused_at_load(tiny_controlnet_dir, tmp_path, value):
    from safetensors.torch import load_file, save_file

    from cnetcli.models.controlnet import load_controlnet

    bad = tmp_path / "cn"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_controlnet_dir / "config.json").read_text())
    sd = load_file(str(tiny_controlnet_dir / "diffusion_pytorch_model.safetensors"))
    key = next(k for k in sorted(sd) if k.endswith("conv_in.weight"))
    sd[key][0, 0, 0, 0] = value
    save_file(sd, str(bad / "diffusion_pytorch_model.safetensors"))
    assert load_controlnet(str(tiny_controlnet_dir)) is not None  # the healthy one loads
    with pytest.raises(ModelLoadError, match=rf"{bad}: the weights hold NaN or Inf \(1 value\(s\) in {key}\)"):
        load_controlnet(str(bad))
