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
    """`module` with its Linear layers in int8 (weights quantised once, activations per batch), attention's
    projections included: nn.MultiheadAttention keeps its in-projection as a bare parameter, which dynamic
    quantisation skips, so each self-attention is first rebuilt from two Linear layers (the same arithmetic)."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.MultiheadAttention and child._qkv_same_embed_dim:  # noqa: SLF001
                setattr(parent, name, _self_attention(torch)(child))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices: the API works in the torch we pin
        return torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)


_classes: dict[str, type] = {}


def _self_attention(torch: Any) -> type:
    """nn.MultiheadAttention's self-attention as two Linear layers around scaled_dot_product_attention (defined
    here, when torch is loaded: imagedb imports torch only with a model)."""
    if "attention" in _classes:
        return _classes["attention"]
    nn, functional = torch.nn, torch.nn.functional

    class SelfAttention(nn.Module):
        def __init__(self, mha: Any) -> None:
            super().__init__()
            dim = mha.embed_dim
            self.heads, self.batch_first = mha.num_heads, mha.batch_first
            self.in_proj = nn.Linear(dim, 3 * dim, bias=mha.in_proj_bias is not None)
            self.in_proj.weight = mha.in_proj_weight
            if mha.in_proj_bias is not None:
                self.in_proj.bias = mha.in_proj_bias
            self.out_proj = nn.Linear(dim, dim, bias=mha.out_proj.bias is not None)
            self.out_proj.weight, self.out_proj.bias = mha.out_proj.weight, mha.out_proj.bias

        def forward(self, query: Any, key: Any = None, value: Any = None, need_weights: bool = False,
                    attn_mask: Any = None, **_: Any) -> tuple[Any, None]:  # fmt: skip
            x = query if self.batch_first else query.transpose(0, 1)  # the towers attend to themselves only
            batch, length, dim = x.shape
            qkv = self.in_proj(x).reshape(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
            out = functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
            out = self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))
            return (out if self.batch_first else out.transpose(0, 1)), None

    _classes["attention"] = SelfAttention
    return SelfAttention


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
