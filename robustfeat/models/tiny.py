"""Tiny random-init models built in code (no downloads), registered in the zoo like the
real ones so that tests and smoke runs go through exactly the same paths."""

from __future__ import annotations

import string

import torch.nn.functional as F
from torch import nn


def char_tokenizer(with_specials: bool = True):
    """A character-level fast tokenizer built in code (printable ASCII)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(string.printable) - {" "}) + [" "])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    if with_specials:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        eos_token="[SEP]", bos_token="[CLS]",
    )


class StaticSamePadConv2d(nn.Conv2d):
    """A Conv2d that pads itself in forward ('same' padding fixed for one image size),
    like EfficientNet-Lite's convolutions."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, image_size: int) -> None:
        super().__init__(cin, cout, k, stride=stride, bias=False)
        out = -(-image_size // stride)
        pad = max((out - 1) * stride + k - image_size, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x):
        x = self.static_padding(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class TinyConvNet(nn.Module):
    """A small CNN with a 10-way 'pretrained' head named like EfficientNet's (``_fc``)."""

    def __init__(self, image_size: int = 32) -> None:
        super().__init__()
        self.stem = StaticSamePadConv2d(3, 8, 3, stride=2, image_size=image_size)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU())
        self.project = nn.Conv2d(16, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self._fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.project(self.block1(F.relu(self.bn(self.stem(x)))))
        return self._fc(self.pool(x).flatten(1))
