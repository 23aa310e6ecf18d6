"""The model on a CPU: images/s of the open_clip models a user would pick, and numeric modes of the default one.

Part 1: for each model (random weights: speed does not depend on the weights), encode_image on batches of 32
preprocessed images with 2 threads, one warm-up batch first; beside each, the published zero-shot ImageNet-1k top-1
accuracy of its usual pretrained weights (open_clip's docs/openclip_results.csv; MobileCLIP from Apple's model
cards, which open_clip's table does not list).

Part 2: the default model (ViT-B-32) in fp32 under torch.no_grad (the reference), then inference_mode, 1 thread,
channels_last, bfloat16 autocast: images/s and the cosine of each mode's vectors to the reference's (mean and
minimum over the batch). A mode is acceptable when its minimum cosine is >= 0.999.

    python bench/cpu_models_bench.py [--batches 2] [--models ViT-B-32 ...]
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import numpy as np
import torch
from results_dir import RESULTS

# (model, pretrained tag whose accuracy is quoted, ImageNet-1k zero-shot top-1 %, source)
PUBLISHED = {
    "ViT-B-32": ("laion2b_s34b_b79k", 66.56, "open_clip docs/openclip_results.csv"),
    "ViT-B-16": ("datacomp_xl_s13b_b90k", 73.49, "open_clip docs/openclip_results.csv"),
    "RN50": ("openai", 59.82, "open_clip docs/openclip_results.csv"),
    "MobileCLIP-S1": ("datacompdr", 72.6, "Apple's MobileCLIP model card (huggingface.co/apple/MobileCLIP-S1-OpenCLIP)"),
    "MobileCLIP-S2": ("datacompdr", 74.4, "Apple's MobileCLIP model card (huggingface.co/apple/MobileCLIP-S2-OpenCLIP)"),
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


def _rate(encode, batch: torch.Tensor, batches: int) -> tuple[float, np.ndarray]:
    encode(batch[:4])  # warm-up: the first call allocates and picks kernels
    started = time.perf_counter()
    for _ in range(batches):
        out = encode(batch)
    return batches * len(batch) / (time.perf_counter() - started), out


def _normalised(features: torch.Tensor) -> np.ndarray:
    array = features.float().numpy()
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def models_table(names: list[str], batches: int) -> list[dict[str, object]]:
    torch.set_num_threads(2)
    rows = []
    for name in names:
        model, side = _model(name)
        batch = _images(side)

        def encode(x: torch.Tensor, model: torch.nn.Module = model) -> np.ndarray:
            with torch.inference_mode():
                return _normalised(model.encode_image(x))

        rate, out = _rate(encode, batch, batches)
        tag, accuracy, source = PUBLISHED.get(name, ("", float("nan"), ""))
        params = sum(p.numel() for p in model.visual.parameters()) / 1e6
        rows.append(
            {
                "model": name,
                "input": side,
                "dim": int(out.shape[1]),
                "image_tower_params_m": params,
                "images_per_s": rate,
                "pretrained": tag,
                "imagenet_zero_shot_top1": accuracy,
                "accuracy_source": source,
            }
        )
        print(
            f"  {name:<15} {side:>4} px  dim {out.shape[1]:>4}  {params:>6.1f} M  {rate:>6.1f} images/s"
            f"  ImageNet {accuracy:.1f}% ({tag})",
            flush=True,
        )
        del model
    return rows


def modes_table(batches: int) -> list[dict[str, object]]:
    model, side = _model("ViT-B-32")
    batch = _images(side)
    results: list[dict[str, object]] = []
    reference: np.ndarray | None = None

    def run(label: str, threads: int, grad_ctx, *, channels_last: bool = False, bf16: bool = False) -> None:
        nonlocal reference
        torch.set_num_threads(threads)
        x = batch.contiguous(memory_format=torch.channels_last) if channels_last else batch
        m = model.to(memory_format=torch.channels_last) if channels_last else model.to(memory_format=torch.contiguous_format)

        def encode(inputs: torch.Tensor) -> np.ndarray:
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
            with grad_ctx(), autocast:
                return _normalised(m.encode_image(inputs))

        rate, out = _rate(encode, x, batches)
        if reference is None:
            reference = out
        cosines = np.sum(out * reference, axis=1)
        row = {
            "mode": label,
            "threads": threads,
            "images_per_s": rate,
            "cosine_to_fp32_mean": float(cosines.mean()),
            "cosine_to_fp32_min": float(cosines.min()),
        }
        results.append(row)
        print(
            f"  {label:<44} {rate:>6.1f} images/s  cosine to fp32 mean {row['cosine_to_fp32_mean']:.6f}"
            f" min {row['cosine_to_fp32_min']:.6f}",
            flush=True,
        )

    run("fp32, no_grad, 2 threads (reference)", 2, torch.no_grad)
    run("fp32, inference_mode, 2 threads (imagedb)", 2, torch.inference_mode)
    run("fp32, inference_mode, 1 thread", 1, torch.inference_mode)
    run("fp32, inference_mode, channels_last", 2, torch.inference_mode, channels_last=True)
    run("bfloat16 autocast, inference_mode", 2, torch.inference_mode, bf16=True)
    torch.set_num_threads(2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=2, help="timed batches of 32 per model")
    parser.add_argument("--models", nargs="+", default=list(PUBLISHED))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, batch {BATCH}, 2 threads, random weights\n\nmodels")
    table = models_table(args.models, args.batches)
    print("\nViT-B-32 numeric modes (cosine to the fp32 reference's vectors)")
    modes = modes_table(args.batches)
    (RESULTS / "cpu_models.json").write_text(
        json.dumps({"torch": torch.__version__, "batch": BATCH, "models": table, "modes": modes}, indent=1)
    )


if __name__ == "__main__":
    main()
