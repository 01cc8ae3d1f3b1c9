"""Feature files: our HDF5 format (resumable, atomic), MATLAB's headerless ``.bin`` and hloc's layout.

Other projects' files (hloc's HDF5, MATLAB's ``.bin``, Patch-NetVLAD's ``.npy``) are read into the same
shape by :func:`load_global_features` (see :mod:`netvlad.io.peers`); every command reads feature
files with it.

HDF5 feature file (the default, written by ``netvlad extract``):

- dataset ``names``: N variable-length UTF-8 strings (image names relative to their root);
- dataset ``descriptors``: N×D float32 or float16, chunked by rows;
- attributes: ``format`` ("netvlad-features"), ``version``, ``fingerprint`` (the model's),
  ``dim``, ``dtype``, ``preprocessing`` and ``model_config`` (JSON), ``names_sha256`` (hash of the
  ordered names), ``complete`` (bool), ``bad_images`` (JSON list of names whose rows are NaN),
  ``num_images``, ``compute`` (fp32 / bf16 / fp16: the arithmetic the model ran in) and, when
  known, ``model_ref`` (the preset name or checkpoint's absolute path that ``netvlad extract`` ran:
  provenance for ``netvlad index build``/``query``, not part of the file's identity).

A run writes ``OUT.partial.h5`` (with a per-row ``written`` mask and a ``done`` count, set only
after the batch's rows are on disk) and renames it to OUT when complete, so OUT is never a partial
file; ``OUT.lock`` keeps a second process from writing the same OUT. This is
what the MATLAB original lacks: it truncates ``.bin`` files in place and never recomputes an
existing one, so an interrupted run silently poisons every later run.

Every feature file goes through this subpackage; the other h5py users read MATLAB v7.3 files
(``netvlad.data.formats.mat``, ``netvlad.convert``), which are HDF5 too.
"""

from __future__ import annotations

from netvlad.io.compare import (
    FeaturePair,
    MixedModelsError,
    check_same_model,
    load_database_features,
    load_db_and_queries,
    load_named_features,
)
from netvlad.io.export import EXPORT_FORMATS, export_features
from netvlad.io.features import (
    FORMAT,
    VERSION,
    FeatureFileError,
    FeatureIdentity,
    names_sha256,
    partial_path,
    read_attrs,
    read_features,
    write_features,
)
from netvlad.io.hloc import export_hloc, read_hloc, read_image_lists, select_names
from netvlad.io.matlab import read_bin, read_bin_pair, write_bin
from netvlad.io.patches import PATCH_FORMAT, PatchFile, PatchWriter, read_patch_attrs
from netvlad.io.peers import (
    NAMELESS_SOURCES,
    SOURCES,
    GlobalFeatures,
    align_features,
    feature_file_kind,
    load_global_features,
    read_image_list,
)
from netvlad.io.rows import FeatureRows, open_feature_rows
from netvlad.io.writer import FeatureWriter, OutputStatus, output_status

__all__ = [
    "EXPORT_FORMATS",
    "FORMAT",
    "VERSION",
    "FeatureFileError",
    "FeatureIdentity",
    "FeaturePair",
    "FeatureRows",
    "FeatureWriter",
    "GlobalFeatures",
    "MixedModelsError",
    "NAMELESS_SOURCES",
    "OutputStatus",
    "PATCH_FORMAT",
    "PatchFile",
    "PatchWriter",
    "SOURCES",
    "align_features",
    "check_same_model",
    "export_features",
    "export_hloc",
    "feature_file_kind",
    "load_database_features",
    "load_db_and_queries",
    "load_global_features",
    "load_named_features",
    "names_sha256",
    "open_feature_rows",
    "output_status",
    "partial_path",
    "read_attrs",
    "read_bin",
    "read_bin_pair",
    "read_features",
    "read_hloc",
    "read_image_list",
    "read_image_lists",
    "read_patch_attrs",
    "select_names",
    "write_bin",
    "write_features",
]
