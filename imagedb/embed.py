"""CLIP embeddings with open_clip. torch is imported here only, when a model is first loaded."""

from __future__ import annotations

import contextlib
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagedb import architectures, config, cpus
from imagedb.errors import InvalidInput, ModelUnavailable

if TYPE_CHECKING:
    from PIL import Image

_SCHEMAS = ("hf-hub:", "local-dir:")
# IMAGEDB_EMBED_PRECISION=fp32 turns off bfloat16 autocast on CPUs that have native bfloat16 and TF32 on GPUs
# (see numeric_mode).
PRECISION_ENV = "IMAGEDB_EMBED_PRECISION"
HUB_PROBE_SECONDS = 3.0
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass(frozen=True)
class ModelSpec:
    """A model's identity: an open_clip architecture plus a pretrained tag or an absolute checkpoint path."""

    name: str
    pretrained: str

    @classmethod
    def parse(cls, spec: str) -> ModelSpec:
        """`NAME`, `NAME:TAG`, `NAME:/path/to/checkpoint`, or an open_clip `hf-hub:`/`local-dir:` name."""
        spec = spec.strip()
        if not spec:
            raise InvalidInput("empty model name: use NAME[:PRETRAINED], e.g. ViT-B-32:laion2b_s34b_b79k")
        if spec.startswith(_SCHEMAS):
            if spec.startswith("local-dir:"):
                return cls("local-dir:" + str(Path(spec[len("local-dir:") :]).expanduser().resolve()), "")
            return cls(spec, "")
        name, _, pretrained = spec.partition(":")
        if _looks_like_path(pretrained):
            pretrained = str(Path(pretrained).expanduser().resolve())
        parsed = cls(name, pretrained)
        architectures.check(name, parsed.checkpoint)  # before torch is imported: a typo fails at once
        return parsed

    def __str__(self) -> str:
        return f"{self.name}:{self.pretrained}" if self.pretrained else self.name

    @property
    def shown(self) -> str:
        """The spec as a client may see it: a checkpoint by its file name, since its folder is the server's."""
        return f"{self.name}:{self.checkpoint.name}" if self.checkpoint is not None else str(self)

    @property
    def checkpoint(self) -> Path | None:
        return Path(self.pretrained) if _looks_like_path(self.pretrained) else None

    @property
    def has_weights(self) -> bool:
        """Whether the spec names trained weights: a tag, a checkpoint, or a hub/local-dir model that has them."""
        return bool(self.pretrained) or self.name.startswith(_SCHEMAS)

    @property
    def label(self) -> str:
        """How the user is told which model loads: `ViT-B-32 (laion2b_s34b_b79k)`."""
        if self.name.startswith(_SCHEMAS):
            return self.name
        return f"{self.name} ({self.pretrained or 'random weights'})"


# The seed of a model loaded without weights (--allow-random-weights): the same weights in every process, so its
# vectors and later queries agree.
RANDOM_WEIGHTS_SEED = 0


def require_weights(spec: ModelSpec) -> None:
    """Refuse a spec without weights (`ViT-B-32` alone): open_clip would silently give random ones, different in
    every process, and every vector made with them would be noise."""
    if spec.has_weights:
        return
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(spec.name)
    if tags:
        hint = f"pretrained tags open_clip knows for it: {', '.join(tags)}; e.g. --model {spec.name}:{tags[0]}"
    elif spec.name in open_clip.list_models():
        hint = f"open_clip knows no pretrained tag for it: pass a checkpoint, --model {spec.name}:/path/to/weights.pt"
    else:
        hint = f"open_clip knows no model named {spec.name!r} (see open_clip.list_pretrained())"
    raise InvalidInput(
        f"model {spec.name} names no weights, so it would be randomly initialised: {hint}"
        " (--allow-random-weights if random weights are what you want, e.g. for a test)"
    )


def _looks_like_path(value: str) -> bool:
    return "/" in value or os.sep in value or value.endswith(_CHECKPOINT_SUFFIXES)


class Embedder:
    """Turns images and texts into L2-normalised vectors of one model."""

    def __init__(self, spec: ModelSpec, device: str | None = None) -> None:
        import open_clip
        import torch

        torch.set_num_threads(cpus.available())
        self.spec = spec
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._register_config_beside_checkpoint(open_clip)
        _check_hub_reachable(spec, open_clip)
        if not spec.has_weights:
            torch.manual_seed(RANDOM_WEIGHTS_SEED)  # only reached with --allow-random-weights: see require_weights
        weights = _hub_weights(spec, open_clip)
        cached = hub_cached(*weights) if weights else None
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.name,
                pretrained=spec.pretrained or None,
                device=self.device,
                cache_dir=cached[0] if cached else None,  # `imagedb models fetch`'s folder, when they are there
            )
            self._tokenizer = open_clip.get_tokenizer(spec.name)
        except Exception as exc:  # open_clip raises RuntimeError, OSError, hub errors, KeyError...
            raise ModelUnavailable(self._failure_message(exc)) from exc
        model.eval()
        self._model = model
        self._torch = torch
        self.numeric_mode = numeric_mode(torch, self.device)
        if self.device.startswith("cuda"):  # the flags are the process's: texts use TF32 too, at the same cosine
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.numeric_mode == TF32
        cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
        self.preprocessor = Preprocess(preprocess, str(cfg.get("resize_mode", "shortest")))
        with torch.inference_mode():
            probe = self._tokenizer(["a"]).to(self.device)
            self.dim = int(model.encode_text(probe).shape[-1])

    def input_side(self) -> int:
        """The side of the square image the model takes: 224 for most open_clip models, 336 or 384 for some."""
        size = getattr(getattr(self._model, "visual", None), "image_size", 224)  # carried by the visual tower
        return int(max(size) if isinstance(size, (tuple, list)) else size)

    def provenance(self) -> dict[str, Any]:
        """What these vectors depend on besides the weights file: library versions, preprocessing, tokenizer."""
        import open_clip

        cfg = dict(getattr(getattr(self._model, "visual", None), "preprocess_cfg", None) or {})
        preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
        # bfloat16 autocast changes the vectors slightly (cosine >= 0.9999 to fp32's): it is part of where they
        # came from, recorded with the image preprocessing (the mode of the process that registered the model).
        preprocess["numeric_mode"] = self.numeric_mode
        tokenizer = type(self._tokenizer).__name__
        context = getattr(self._tokenizer, "context_length", None)
        name = getattr(self._tokenizer, "tokenizer_name", None) or getattr(self._tokenizer, "name", None)
        return {
            "open_clip_version": open_clip.__version__,
            "torch_version": self._torch.__version__,
            "preprocess": preprocess,
            "tokenizer": f"{tokenizer}"
            + (f" {name}" if isinstance(name, str) else "")
            + (f" (context {context})" if context else ""),
        }

    def _register_config_beside_checkpoint(self, open_clip: Any) -> None:
        # A custom architecture travels as NAME.json next to its checkpoint; built-in names need nothing.
        checkpoint = self.spec.checkpoint
        if checkpoint is None:
            return
        if not checkpoint.is_file():
            raise ModelUnavailable(f"checkpoint file not found: {checkpoint}")
        config = checkpoint.with_name(f"{self.spec.name}.json")
        if self.spec.name not in open_clip.list_models() and config.is_file():
            open_clip.add_model_config(config)

    def _failure_message(self, exc: Exception) -> str:
        # open_clip's messages run to several sentences (hub retries, cache hints): the first one says it.
        text = str(exc).strip()
        reason = text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(exc).__name__
        if self.spec.checkpoint is not None:
            # open_clip asserts on the shapes it resizes, torch lists missing and unexpected tensors after a colon.
            if isinstance(exc, AssertionError) or text.startswith("Error(s) in loading state_dict"):
                return (
                    f"cannot load model {self.spec}: its weights do not fit the architecture {self.spec.name}"
                    f" ({reason.rstrip(':')}): name the architecture they were saved from,"
                    f" NAME:{self.spec.checkpoint} (a custom one with NAME.json beside the checkpoint)"
                )
            return f"cannot load model {self.spec}: {reason}"
        return (
            f"cannot load model {self.spec}: {reason}. If the weights cannot be downloaded here, pass a local"
            f" checkpoint: --model {self.spec.name}:/path/to/open_clip_model.safetensors (HF_HUB_OFFLINE=1 skips"
            " the download attempts)"
        )

    def preprocess(self, image: Image.Image) -> Any:
        """The model's resize, crop and normalisation; thread-safe, so decode workers can run it."""
        return self.preprocessor(image)

    def encode_images(self, tensors: Sequence[Any]) -> np.ndarray:
        with self._torch.inference_mode(), self._autocast():
            batch = self._torch.stack(list(tensors)).to(self.device)
            return _normalise(self._model.encode_image(batch))

    def _autocast(self) -> Any:
        if self.numeric_mode == BF16_AUTOCAST:
            return self._torch.autocast("cpu", dtype=self._torch.bfloat16)
        return contextlib.nullcontext()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        with self._torch.inference_mode():
            return _normalise(self._model.encode_text(self._tokenizer(list(texts)).to(self.device)))


# The longest side a model input may have against its shortest before preprocessing sees it.
MAX_ASPECT = 2.0


def _within_aspect(image: Image.Image, resize_mode: str) -> Image.Image:
    """The central part of an image far longer than wide, for models that resize the shortest side and then crop
    the centre square (open_clip's default). The result is the same square, but without this a 312-byte PNG of
    1 x 60000 pixels was first scaled to 224 x 13.4 million pixels: 14 GB of memory for one query."""
    width, height = image.size
    if resize_mode != "shortest" or min(width, height) < 1 or max(width, height) <= MAX_ASPECT * min(width, height):
        return image
    if width > height:
        keep = int(MAX_ASPECT * height)
        left = (width - keep) // 2
        return image.crop((left, 0, left + keep, height))
    keep = int(MAX_ASPECT * width)
    top = (height - keep) // 2
    return image.crop((0, top, width, top + keep))


FP32 = "fp32"
BF16_AUTOCAST = "bf16-autocast"
TF32 = "tf32"


@dataclass(frozen=True)
class Preprocess:
    """A model's image preprocessing without the model, for decode threads."""

    transform: Any  # open_clip's torchvision Compose
    resize_mode: str

    def __call__(self, image: Image.Image) -> Any:
        return self.transform(_within_aspect(image, self.resize_mode))


def numeric_mode(torch: Any, device: str) -> str:
    """How image vectors are computed. On a CPU with native bfloat16 (AVX512-BF16 or AMX, as oneDNN reports),
    bfloat16 autocast: 1.2-1.6x the images/s of fp32 for ViT-B-32, with vectors at cosine >= 0.9999 to fp32's
    (bench/cpu_models_bench.py); texts stay fp32 (cheap). Other CPUs: fp32, which bfloat16 would only slow down.
    On a CUDA GPU, TF32 matrix products: 4.6x fp32's images/s for ViT-B-32 on an H200, at cosine >= 0.999999 to
    fp32's, where bfloat16 autocast reached 0.99994 (bench/results/ingest_cuda.json)."""
    if os.environ.get(PRECISION_ENV, "").strip().lower() == FP32:
        return FP32
    if device.startswith("cuda"):
        return TF32
    if device != "cpu":
        return FP32
    try:
        native = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return BF16_AUTOCAST if native else FP32


def _normalise(features: Any) -> np.ndarray:
    array = features.float().cpu().numpy()
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


# Called, when set, just before a model that is not loaded yet starts loading (seconds, or a download): the CLI
# sets it to tell the user what the wait is.
on_load: Callable[[ModelSpec], None] | None = None

_loaded: dict[ModelSpec, Embedder] = {}
_loading = threading.Lock()


def load(spec: ModelSpec) -> Embedder:
    """One Embedder per model per process: loading weights takes seconds and hundreds of MB.

    Requests that arrive together while a model loads wait for that one load instead of starting their own.
    """
    found = _loaded.get(spec)
    if found is not None:
        return found
    with _loading:
        found = _loaded.get(spec)
        if found is None:
            if on_load is not None:
                on_load(spec)
            found = _loaded[spec] = Embedder(spec)
        return found


def _hub_weights(spec: ModelSpec, open_clip: Any) -> tuple[str, list[str]] | None:
    """The hub repository and file names the weights of `spec` download from; None when not from the hub."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if spec.name.startswith("hf-hub:"):
        return spec.name[len("hf-hub:") :], [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    if spec.checkpoint is not None or spec.name.startswith("local-dir:") or not spec.pretrained:
        return None
    hub = open_clip.get_pretrained_cfg(spec.name, spec.pretrained).get("hf_hub", "")
    if not hub:
        return None  # an unknown tag (open_clip says so at once) or weights from a plain URL
    repo, filename = os.path.split(hub)  # "org/name/" means the default file name, as in open_clip
    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return repo, [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return repo, [filename[:-4] + ".safetensors", filename]
    return repo, [filename]


def weights_folder() -> Path:
    """Where `imagedb models fetch` keeps hub weights: a hub cache under the home folder, kept with the data."""
    return config.home() / "models" / "hub"


def hub_cached(repo: str, names: list[str]) -> tuple[str | None, Path] | None:
    """(cache folder, file) of weights downloaded already: imagedb's folder first, then the hub's own cache."""
    from huggingface_hub import try_to_load_from_cache

    for cache_dir in (str(weights_folder()), None):
        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(found, str):
                return cache_dir, Path(found)
    return None


def missing_weights_message(spec: ModelSpec, repo: str, filename: str, why: str) -> str:
    """What to do when hub weights are not here and cannot be downloaded: the repository and file, and the two
    ways to bring them."""
    return (
        f"cannot load model {spec}: its weights, {filename} of the Hugging Face repository {repo}, are not"
        f" downloaded yet and {why}. Where there is a network: imagedb models fetch {spec}; or copy the file from"
        f" https://huggingface.co/{repo}/blob/main/{filename} here and run imagedb models import {spec} FILE"
        f" (or pass it: --model {spec.name}:/path/to/{filename})"
    )


def _check_hub_reachable(spec: ModelSpec, open_clip: Any) -> None:
    """Fail at once, not after a minute of silent retries, when weights must be downloaded and cannot be."""
    from huggingface_hub import constants

    weights = _hub_weights(spec, open_clip)
    if weights is None:
        return
    repo, names = weights
    if hub_cached(repo, names) is not None:
        return
    if constants.HF_HUB_OFFLINE:
        raise ModelUnavailable(missing_weights_message(spec, repo, names[0], "HF_HUB_OFFLINE is set"))
    why = hub_unreachable()
    if why is not None:
        raise ModelUnavailable(missing_weights_message(spec, repo, names[0], why))


def hub_unreachable() -> str | None:
    """Why the model hub cannot be reached, in a few seconds; None when it answers (with any status)."""
    from huggingface_hub import constants

    try:
        urllib.request.urlopen(constants.ENDPOINT, timeout=HUB_PROBE_SECONDS).close()
    except urllib.error.HTTPError:
        return None  # the hub answered, even if not with 200: it is reachable
    except (OSError, ValueError) as exc:
        return f"the model hub {constants.ENDPOINT} cannot be reached ({getattr(exc, 'reason', exc)})"
    return None
