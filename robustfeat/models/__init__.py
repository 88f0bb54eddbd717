"""The model zoo and the ModelHandle interface shared by every family."""

from robustfeat.models.handle import ModelHandle, ModelInfo  # noqa: F401
from robustfeat.models.zoo import load_model  # noqa: F401
