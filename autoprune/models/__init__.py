"""Built-in models (CIFAR ResNets, VGG-16-BN, MobileNetV2, a digits CNN) and loading of trained weights."""

from autoprune.models.registry import MODELS, ModelSpec, build_model, load_weights, model_spec

__all__ = ["MODELS", "ModelSpec", "build_model", "load_weights", "model_spec"]
