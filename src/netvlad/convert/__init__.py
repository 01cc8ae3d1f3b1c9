"""Import MatConvNet models: the released NetVLAD .mat files and MatConvNet ImageNet backbones.

``convert_matconvnet(path)`` reads a v5 or v7.3 .mat file (:mod:`netvlad.convert.matfile`),
parses its SimpleNN layers (:mod:`netvlad.convert.matconvnet`) and builds a ``PlaceModel`` whose
descriptors match MATLAB's (:mod:`netvlad.convert.model`).
"""

from __future__ import annotations

from netvlad.convert.dispatch import SUPPORTED_FORMATS, convert_file
from netvlad.convert.matconvnet import (
    CLASS2STRUCT_HINT,
    HeadSpec,
    MatLayer,
    MatNet,
    load_matconvnet,
    split_network,
)
from netvlad.convert.matfile import MatlabObject, is_v73, read_mat
from netvlad.convert.model import SUPPORTED_ARCHS, ConversionInfo, ConvertConfig, convert_matconvnet

__all__ = [
    "CLASS2STRUCT_HINT",
    "SUPPORTED_ARCHS",
    "SUPPORTED_FORMATS",
    "ConversionInfo",
    "ConvertConfig",
    "HeadSpec",
    "MatLayer",
    "MatNet",
    "MatlabObject",
    "convert_file",
    "convert_matconvnet",
    "is_v73",
    "load_matconvnet",
    "read_mat",
    "split_network",
]
