"""The model on a CPU: images/s of the open_clip models a user would pick, and numeric modes of the default one.

Part 1: for each model (random weights: speed does not depend on the weights), encode_image on batches of 32
preprocessed images with 2 threads, one warm-up batch first, the models interleaved batch by batch (median); beside
each, the published zero-shot ImageNet-1k top-1 accuracy of its usual pretrained weights (open_clip's
docs/openclip_results.csv; MobileCLIP from Apple's model cards, which open_clip's table does not list).

Part 2: the default model (ViT-B-32) in fp32 under torch.no_grad (the reference), then inference_mode, 1 thread,
channels_last, bfloat16 autocast, interleaved batch by batch (median): images/s and the cosine of each mode's
vectors to the reference's (mean and minimum over the batch). A mode is acceptable when its minimum cosine is >= 0.999.

    python bench/cpu_models_bench.py [--rounds 5] [--models ViT-B-32 ...]
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import numpy as np
import torch
from common import write_results

# (model, pretrained tag whose accuracy is quoted, ImageNet-1k zero-shot top-1 %, source)
PUBLISHED = {
    "ViT-B-32": ("laion2b_s34b_b79k", 66.56, "open_clip docs/openclip_results.csv"),
    "ViT-B-16": ("datacomp_xl_s13b_b90k", 73.49, "open_clip docs/openclip_results.csv"),
    "RN50": ("openai", 59.82, "open_clip docs/openclip_results.csv"),
    "MobileCLIP-S1": (
        "datacompdr",
        72.6,
        "Apple's MobileCLIP model card (huggingface.co/apple/MobileCLIP-S1-OpenCLIP)",
    ),
    "MobileCLIP-S2": (
        "datacompdr",
        74.4,
        "Apple's MobileCLIP model card (huggingface.co/apple/MobileCLIP-S2-OpenCLIP)",
    ),
}
BATCH = 32


def _model(name: str) -> tuple[torch.nn.Module, int]:
    import open_clip

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    model.eval()
    # MobileCLIP's blocks train with parallel branches that fold into one convolution for inference (Apple's
    # instructions); a no-op for the other models.
    from timm.utils.model import reparameterize_model

    model = reparameterize_model(model)
    size = model.visual.image_size
    return model, int(max(size) if isinstance(size, (tuple, list)) else size)


def _images(side: int) -> torch.Tensor:
    # Normalised-looking input; the model's speed does not depend on the pixels.
    return torch.from_numpy(np.random.default_rng(0).standard_normal((BATCH, 3, side, side)).astype(np.float32))


def _normalised(features: torch.Tensor) -> np.ndarray:
    array = features.float().numpy()
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def models_table(names: list[str], rounds: int) -> list[dict[str, object]]:
    """All models loaded, then timed one batch each, round after round (interleaved, median kept)."""
    torch.set_num_threads(2)
    loaded = {name: _model(name) for name in names}
    batches = {name: _images(side) for name, (_, side) in loaded.items()}

    def encode(name: str) -> np.ndarray:
        with torch.inference_mode():
            return _normalised(loaded[name][0].encode_image(batches[name]))

    dims = {name: encode(name).shape[1] for name in names}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            started = time.perf_counter()
            encode(name)
            times[name].append(time.perf_counter() - started)
    rows = []
    for name in names:
        model, side = loaded[name]
        rate = BATCH / float(np.median(times[name]))
        tag, accuracy, source = PUBLISHED.get(name, ("", float("nan"), ""))
        params = sum(p.numel() for p in model.visual.parameters()) / 1e6
        rows.append(
            {
                "model": name,
                "input": side,
                "dim": int(dims[name]),
                "image_tower_params_m": params,
                "images_per_s": rate,
                "rounds": rounds,
                "pretrained": tag,
                "imagenet_zero_shot_top1": accuracy,
                "accuracy_source": source,
            }
        )
        print(
            f"  {name:<15} {side:>4} px  dim {dims[name]:>4}  {params:>6.1f} M  {rate:>6.1f} images/s"
            f"  ImageNet {accuracy:.1f}% ({tag})",
            flush=True,
        )
    return rows


def modes_table(batches: int) -> list[dict[str, object]]:
    """Each mode timed one batch at a time, the modes interleaved round after round, the median kept: other work
    on the shared cores then slows every mode alike instead of whichever ran during a burst."""
    model, side = _model("ViT-B-32")
    batch = _images(side)
    last = batch.contiguous(memory_format=torch.channels_last)
    modes = [
        ("fp32, no_grad, 2 threads (reference)", 2, torch.no_grad, False, False),
        ("fp32, inference_mode, 2 threads (imagedb)", 2, torch.inference_mode, False, False),
        ("fp32, inference_mode, 1 thread", 1, torch.inference_mode, False, False),
        ("fp32, inference_mode, channels_last", 2, torch.inference_mode, True, False),
        ("bfloat16 autocast, inference_mode", 2, torch.inference_mode, False, True),
    ]

    def encode(threads: int, grad_ctx, channels_last: bool, bf16: bool) -> np.ndarray:  # type: ignore[no-untyped-def]
        torch.set_num_threads(threads)
        m = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        with grad_ctx(), autocast:
            return _normalised(m.encode_image(last if channels_last else batch))

    outputs = [encode(*mode[1:]) for mode in modes]  # warm-up, and the vectors compared
    times: list[list[float]] = [[] for _ in modes]
    for _ in range(batches):
        for i, mode in enumerate(modes):
            started = time.perf_counter()
            encode(*mode[1:])
            times[i].append(time.perf_counter() - started)
    torch.set_num_threads(2)
    reference = outputs[0]
    results = []
    for (label, threads, *_), out, seconds in zip(modes, outputs, times, strict=True):
        cosines = np.sum(out * reference, axis=1)
        row = {
            "mode": label,
            "threads": threads,
            "images_per_s": BATCH / float(np.median(seconds)),
            "rounds": len(seconds),
            "cosine_to_fp32_mean": float(cosines.mean()),
            "cosine_to_fp32_min": float(cosines.min()),
        }
        results.append(row)
        print(
            f"  {label:<44} {row['images_per_s']:>6.1f} images/s  cosine to fp32 mean"
            f" {row['cosine_to_fp32_mean']:.6f} min {row['cosine_to_fp32_min']:.6f}",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=list(PUBLISHED))
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the numeric modes")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, batch {BATCH}, 2 threads, random weights\n\nmodels")
    table = models_table(args.models, args.rounds)
    print("\nViT-B-32 numeric modes (cosine to the fp32 reference's vectors; median of interleaved rounds)")
    modes = modes_table(args.rounds)
    write_results("cpu_models.json", {"torch": torch.__version__, "batch": BATCH, "models": table, "modes": modes})


if __name__ == "__main__":
    main()
