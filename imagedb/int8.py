"""The opt-in int8 embedding mode (IMAGEDB_EMBED_PRECISION=int8): the image tower's Linear layers quantised to
int8 with PyTorch's dynamic quantisation, on CPUs only.

Its vectors are close to fp32's but not interchangeable with them (cosine about 0.999 for ViT-B-32, lower for
some models), so a model's column holds vectors of one family only: a store of int8 vectors into a model whose
vectors are fp32 (or bfloat16, or TF32), or the reverse, is refused (`check_mixing`) until the user re-embeds.
"""

from __future__ import annotations

import warnings
from typing import Any

from imagedb.errors import InvalidInput, ModelMismatch

INT8 = "int8-dynamic"
ASKED = "int8"  # the value of IMAGEDB_EMBED_PRECISION that selects it


def quantize(torch: Any, module: Any) -> Any:
    """`module` with its Linear layers in int8 (weights quantised once, activations per batch). Attention's
    in-projection is a bare parameter in open_clip's towers and stays fp32: its cost is a small part."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices: the API works in the torch we pin
        return torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)


def refuse_device(device: str) -> None:
    """int8 dynamic quantisation runs on CPUs only; on a GPU, TF32 is already faster."""
    if device != "cpu":
        raise InvalidInput(
            f"IMAGEDB_EMBED_PRECISION=int8 runs on a CPU only, and this model runs on {device}:"
            " unset it (the GPU uses TF32), or hide the GPU with CUDA_VISIBLE_DEVICES="
        )


def is_int8(mode: str | None) -> bool:
    return mode == INT8


def refuse_mixing(spec: str, recorded: str | None, current: str) -> None:
    """Refuse to store vectors of `current`'s family into a model whose stored vectors are of the other family.
    `recorded` is the mode in the model's provenance (None: registered before modes were recorded, i.e. fp32)."""
    if is_int8(recorded) == is_int8(current):
        return
    if is_int8(current):
        what, fix = (
            f"model {spec} holds vectors made in {recorded or 'fp32'}, and int8 vectors would mix with them",
            "unset IMAGEDB_EMBED_PRECISION, or re-embed in int8",
        )
    else:
        what, fix = (
            f"model {spec} holds int8 vectors (IMAGEDB_EMBED_PRECISION=int8), and {current} ones would mix with them",
            "set IMAGEDB_EMBED_PRECISION=int8, or re-embed without it",
        )
    raise ModelMismatch(
        f"{what} in one index: {fix} (imagedb models drop {spec} in every collection holding it, then"
        " imagedb models add it again with the mode you want)"
    )
