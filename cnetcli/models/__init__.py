"""Loading Stable Diffusion / ControlNet / captioner weights from a hub id, a local folder or a single file."""
