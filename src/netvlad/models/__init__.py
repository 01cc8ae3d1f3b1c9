"""Place-recognition models: configs and presets, PlaceModel, checkpoints, cluster initialisation.

``create_model("vgg16-netvlad")`` → backbone cropped at conv5_3 → NetVLAD (K=64, vlad_preL2_intra)
→ optional PCA-whitening → L2. Preprocessing travels with the model (``model.preprocess``).
"""

from __future__ import annotations

from netvlad.layers import UninitializedError
from netvlad.models.checkpoint import load_checkpoint, load_model, save_model
from netvlad.models.clusters import ClusterInit, InitConfig, init_clusters
from netvlad.models.config import IMAGENET, LITE0, MATCONVNET, PRESETS, ModelConfig, Preprocess, list_presets
from netvlad.models.model import PlaceModel, check_device, config_out_dim, create_model, resolve_config

__all__ = [
    "IMAGENET",
    "LITE0",
    "MATCONVNET",
    "PRESETS",
    "ClusterInit",
    "InitConfig",
    "ModelConfig",
    "PlaceModel",
    "Preprocess",
    "UninitializedError",
    "check_device",
    "config_out_dim",
    "create_model",
    "init_clusters",
    "list_presets",
    "load_checkpoint",
    "load_model",
    "resolve_config",
    "save_model",
]
