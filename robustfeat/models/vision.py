"""Image classifiers: a pretrained backbone whose original (e.g. ImageNet) head is kept
for forgetting probes, with a new task head beside it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from robustfeat.data.table import Table
from robustfeat.errors import RobustfeatError
from robustfeat.models.handle import ModelHandle, ModelInfo

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_IMAGE_SIDE = 8


class ImageTaskModel(nn.Module):
    """``net`` with its pretrained head swapped for an identity (so ``net(x)`` returns
    pooled features), the pretrained head kept as ``pretrained_head``, and a new ``head``."""

    def __init__(self, net: nn.Module, head_path: str, num_labels: int) -> None:
        super().__init__()
        parent_path, _, child = head_path.rpartition(".")
        parent = net.get_submodule(parent_path) if parent_path else net
        old = getattr(parent, child)
        if not isinstance(old, nn.Linear):
            raise RobustfeatError(f"'{head_path}' is a {type(old).__name__}, not the Linear head this loader expects")
        setattr(parent, child, nn.Identity())
        self.net = net
        self.pretrained_head = old
        self.head = nn.Linear(old.in_features, num_labels)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)  # (N, D) pooled features
        return out if isinstance(out, torch.Tensor) else out.logits  # transformers: the head's input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def pretrained_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.pretrained_head(self.embed(x))


class ImageClassifier(ModelHandle):
    family = "image-classifier"
    default_targets = "all-conv"

    def __init__(self, model: ImageTaskModel, info: ModelInfo, image_size: int,
                 feature_layers: list[str], mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 pretrained_labels: list[str] | None = None) -> None:
        super().__init__(model, info, head=["head"])
        self.image_size = image_size
        self.feature_layers = feature_layers
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.pretrained_labels = pretrained_labels
        #: the layout of the batches ``preprocess`` makes (channels-last inside ``fast_inference``)
        self.memory_format = torch.contiguous_format

    def preprocess(self, table: Table) -> dict[str, torch.Tensor]:
        images = table["image"]
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
            raise RobustfeatError(
                f"images must be (N, H, W) greyscale or (N, H, W, 3) RGB uint8, got shape {tuple(images.shape)}"
            )
        if min(images.shape[1:3]) < MIN_IMAGE_SIDE:
            raise RobustfeatError(
                f"images of {images.shape[1]}x{images.shape[2]} px are too small (at least "
                f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE})"
            )
        x = torch.as_tensor(images).float().div_(255.0)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        # one memory layout whatever the input's strides: convolution kernels round differently per layout
        x = ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)
        return {"pixel_values": x.to(self.device)}

    def forward(self, inputs):
        return self.model(inputs["pixel_values"])

    @contextmanager
    def _fast_layout(self) -> Iterator[None]:
        """Channels-last weights and input batches (convolutions run faster so on CPUs and
        recent GPUs); each 4-d parameter and buffer gets its own strides back on exit, values
        untouched."""
        tensors = [(m, n, t) for m in self.model.modules()
                   for n, t in (*m._parameters.items(), *m._buffers.items()) if t is not None]
        if any(t.ndim == 5 for _, _, t in tensors):  # 3-d convolutions: no channels-last for them
            yield
            return
        saved = [(m, n, t.stride()) for m, n, t in tensors if t.ndim == 4]
        before = self.memory_format
        self.model.to(memory_format=torch.channels_last)
        self.memory_format = torch.channels_last
        try:
            yield
        finally:
            self.memory_format = before
            with torch.no_grad():
                for m, n, stride in saved:
                    t = m._parameters[n] if n in m._parameters else m._buffers.get(n)
                    if t is None or t.stride() == stride:
                        continue
                    back = torch.empty_strided(t.shape, stride, dtype=t.dtype, device=t.device)
                    back.copy_(t.detach())
                    if isinstance(t, nn.Parameter):
                        t.data = back
                    else:
                        m._buffers[n] = back

    def model_view(self, images: np.ndarray) -> np.ndarray:
        """``images`` as the model sees them, before normalisation: (N, S, S, 3) uint8 at the
        model's image size (what the corruption bank corrupts, as ImageNet-C corrupts the
        224 px crop). ``preprocess`` of the result does no further resizing."""
        x = torch.as_tensor(np.asarray(images)).float()
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def pretrained_logits(self, inputs) -> torch.Tensor:
        """Logits of the kept pretrained (ImageNet) head: the forgetting probes read these."""
        with self.inference():
            return self.model.pretrained_logits(inputs["pixel_values"])

    def loss(self, inputs, table):
        return F.cross_entropy(self.forward(inputs), self.labels(table))

    def _features(self, inputs, layers):
        wanted = self.feature_layers if layers is None else [l for l in layers if l != "embedding"]
        feats: dict[str, torch.Tensor] = {}
        with ExitStack() as stack:
            for name in wanted:
                module = self.model.get_submodule(name)

                def hook(_m, _i, out, name=name):
                    feats[name] = out.mean(dim=(2, 3)) if out.ndim == 4 else out

                stack.enter_context(_Hook(module, hook))
            feats["embedding"] = self.model.embed(inputs["pixel_values"])
        return {k: v for k, v in feats.items() if layers is None or k in layers}


class _Hook:
    def __init__(self, module: nn.Module, fn) -> None:
        self.module, self.fn = module, fn

    def __enter__(self):
        self.handle = self.module.register_forward_hook(self.fn)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
