"""Hint types cnet has no annotator for, but that ControlNet has releases for (or that cnet writes itself).

Their hints come from other tools (or, for `circle-outline`, from `cnet data circles`); `cnet generate`
accepts such finished hints (release lookup, resize kind) and `cnet eval` scores the ones with a metric.
`cnet annotate` refuses them with one line.
"""

from __future__ import annotations

from . import HintType, UnionControl, register

_V11 = "lllyasviel/control_v11"

register(HintType("lineart", "line art (no annotator in cnet: bring finished hints)", resize="nearest",
                  metric="edge", releases={"sd15": f"{_V11}p_sd15_lineart"}, union_control_type=UnionControl.LINES))
register(HintType("lineart_anime", "anime line art (no annotator in cnet: bring finished hints)", resize="nearest",
                  aliases=("anime",), metric="edge", releases={"sd15": f"{_V11}p_sd15s2_lineart_anime"},
                  union_control_type=UnionControl.LINES))
register(HintType("inpaint", "inpainting image with masked pixels (no annotator in cnet)", resize="linear",
                  releases={"sd15": f"{_V11}p_sd15_inpaint"}, union_control_type=UnionControl.INPAINT))
register(HintType("ip2p", "instruct-pix2pix: the photo itself (no annotator in cnet)", resize="linear",
                  releases={"sd15": f"{_V11}e_sd15_ip2p"}))
# Other tools' detectors for the same ControlNets (their maps look alike, but cnet cannot make them).
register(HintType("depth_zoe", "ZoeDepth depth (no annotator in cnet; the depth ControlNet)", resize="linear",
                  aliases=("zoe",), metric="depth", releases={"sd15": f"{_V11}f1p_sd15_depth"},
                  union_control_type=UnionControl.DEPTH))
register(HintType("depth_leres", "LeReS depth (no annotator in cnet; the depth ControlNet)", resize="linear",
                  aliases=("leres",), metric="depth", releases={"sd15": f"{_V11}f1p_sd15_depth"},
                  union_control_type=UnionControl.DEPTH))
register(HintType("dwpose", "DWPose skeleton (no annotator in cnet; the openpose ControlNet)", resize="nearest",
                  metric="pose", releases={"sd15": f"{_V11}p_sd15_openpose"},
                  union_control_type=UnionControl.OPENPOSE))
# `cnet data circles` writes these: the outline of a filled circle (what canny finds on it; no release).
register(HintType("circle-outline", "outline of a circle from `cnet data circles` (no annotator)", resize="nearest",
                  metric="edge", reannotate_as="canny"))
