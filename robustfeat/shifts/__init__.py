"""The image corruptions of ImageNet-C as batched torch functions (``corruptions``,
``spatter``), their building blocks (``filters``, ``draws``, ``eight_bit``) and the cache of
corrupted sets (``cache``). The evaluations that use them live in ``robustfeat.evaluations``."""
