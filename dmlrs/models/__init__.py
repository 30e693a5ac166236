"""Backbones, heads and initial weights: ``build_model(...) -> EmbeddingModel``."""
from dmlrs.models.backbones import BACKBONES, BackboneSpec, build_backbone
from dmlrs.models.embedding_model import EmbeddingModel
from dmlrs.models.factory import build_model
from dmlrs.models.heads import HEADS, ClassHead, EmbeddingHead, HashHead
from dmlrs.models.weights import imagenet_weights_path, load_initial_weights

__all__ = ["BACKBONES", "BackboneSpec", "ClassHead", "EmbeddingHead", "EmbeddingModel", "HEADS",
           "HashHead", "build_backbone", "build_model", "imagenet_weights_path",
           "load_initial_weights"]
