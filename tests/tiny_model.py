"""A tiny CLIP, randomly initialised from a fixed seed, saved the way a user's fine-tuned model would be:
a checkpoint file with its architecture as NAME.json beside it. Loading it goes through the same code path as
any local checkpoint (imagedb.embed), with no network."""

from __future__ import annotations

import json
from pathlib import Path

TINY_NAME = "imagedb-tiny-clip"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def make_tiny_model(folder: Path, seed: int = 0) -> str:
    """Write the checkpoint and its config into `folder`; returns the --model value that loads it."""
    import open_clip
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{TINY_NAME}.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_NAME, pretrained=None)
    checkpoint = folder / f"{TINY_NAME}.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return f"{TINY_NAME}:{checkpoint}"
