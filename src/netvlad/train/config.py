"""`TrainConfig`: every ``trainWeakly`` option that matters, with the paper code's defaults."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from netvlad.mining import MiningConfig

#: ``recallNs = [1:5, 10:5:100]`` (24 values).
RECALL_NS: tuple[int, ...] = (1, 2, 3, 4, 5, *range(10, 101, 5))

#: ``backPropToLayer`` used by the paper / demo.m per backbone (lower layers are frozen).
PAPER_BACKPROP_FROM = {"vgg16": "conv5_1", "vgg19": "conv5_1", "alexnet": "conv2"}


@dataclass
class TrainConfig:
    """Options of `netvlad.train.fit` (``trainWeakly`` names in comments).

    Frequencies are in *queries* as in MATLAB and converted to batches with ceil(x / batch_size).
    """

    epochs: int = 30  # nEpoch
    batch_size: int = 4  # batchSize: query tuples per SGD step
    lr: float = 1e-4  # learningRate (demo.m: 1e-3 for Pitts30k)
    lr_down_freq: int = 5  # lrDownFreq (epochs)
    lr_down_factor: float = 2.0  # lrDownFactor
    momentum: float = 0.9
    weight_decay: float = 1e-3
    margin: float = 0.1  # on squared distances
    n_neg_choice: int = 1000  # nNegChoice
    n_neg_cap: int = 10  # nNegCap
    n_neg_cache: int = 10  # nNegCache
    exclude_very_hard: bool = False  # excludeVeryHard
    comp_feats_frequency: int = 1000  # compFeatsFrequency (queries); doubles at each LR drop
    save_frequency: int = 2000  # saveFrequency (queries): ckpt_latest.pt
    backprop_from: str | None = "auto"  # backPropToLayer: "auto" = conv5_1 (VGG), conv2 (AlexNet), else all
    jitter_flip: bool = False  # jitterFlip
    jitter_scale: tuple[float, ...] = ()  # jitterScale
    cache_dtype: str = "float16"  # cache storage: float16 halves memory; float32 as MATLAB
    mining_pca_dim: int | None = None  # PCA-reduce the cache for mining only
    save_cache: bool = True  # keep the current cache on disk so --resume is bit-exact
    compute_batch_size: int = 10  # computeBatchSize (cache and val extraction)
    num_workers: int = 2  # image-decoding processes for cache and val extraction (0 = in process)
    test0: bool = True  # off-the-shelf val evaluation before training
    n_test_sample: int = 1000  # nTestSample (val recall, rng 43)
    n_test_rank_sample: int = 5000  # nTestRankSample (val rank loss, rng 43)
    recall_ns: tuple[int, ...] = RECALL_NS
    cluster_images: int = 500  # images sampled for NetVLAD initialisation when uninitialised
    limit_batches: int | None = None  # at most this many batches per epoch (smoke runs)
    limit_queries: int | None = None  # train on a fixed random subset of this many queries
    amp: bool = False  # CUDA autocast (bfloat16) for the tuple forward/backward
    seed: int = 42  # query order rng(seed + epoch) as MATLAB's rng(42 + iEpoch)
    # Which queries an epoch visits: "uniform" (each once, MATLAB), "msls" (drawn with MSLS's
    # night/sideways weights, netvlad.train.sampling), "auto" (msls on an MSLS dataset).
    query_sampling: str = "auto"

    def __post_init__(self):
        self.jitter_scale = tuple(float(s) for s in self.jitter_scale)
        self.recall_ns = tuple(int(n) for n in self.recall_ns)
        if self.cache_dtype not in ("float16", "float32", "bfloat16"):
            raise ValueError(
                f"TrainConfig.cache_dtype must be float16, bfloat16 or float32, got {self.cache_dtype!r}"
            )
        for name in ("epochs", "batch_size", "lr_down_freq", "comp_feats_frequency", "save_frequency"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if int(self.num_workers) < 0:
            raise ValueError(
                f"TrainConfig.num_workers must be >= 0 (0 = in the main process), got {self.num_workers}"
            )
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.query_sampling not in ("auto", "uniform", "msls"):
            raise ValueError(
                f"TrainConfig.query_sampling must be auto, uniform or msls, got {self.query_sampling!r}"
            )
        if any(s <= 0 for s in self.jitter_scale):
            raise ValueError(f"TrainConfig.jitter_scale factors must be > 0, got {self.jitter_scale}")

    def mining(self) -> MiningConfig:
        return MiningConfig(
            n_neg_choice=self.n_neg_choice,
            n_neg_cap=self.n_neg_cap,
            n_neg_cache=self.n_neg_cache,
            margin=self.margin,
            exclude_very_hard=self.exclude_very_hard,
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["jitter_scale"] = list(self.jitter_scale)
        d["recall_ns"] = list(self.recall_ns)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"TrainConfig: unknown option(s) {sorted(unknown)}")
        return cls(**d)

    def schedule(self, epoch: int) -> tuple[float, int]:
        """(learning rate, cache refresh period in batches) for 1-based `epoch`.

        MATLAB: at epochs 6, 11, ... (``mod(iEpoch, lrDownFreq) == 1``) ``lr /= lrDownFactor`` and
        ``batchCompFeatsFrequency = round(batchCompFeatsFrequency * lrDownFactor)``, counted from
        epoch 1 even when resuming.
        """
        lr = self.lr
        freq = math.ceil(self.comp_feats_frequency / self.batch_size)
        for e in range(2, epoch + 1):
            if e % self.lr_down_freq == 1:  # as MATLAB: lrDownFreq = 1 never decays
                lr /= self.lr_down_factor
                freq = int(round(freq * self.lr_down_factor))
        return lr, max(1, freq)

    @property
    def save_every_batches(self) -> int:
        return max(1, math.ceil(self.save_frequency / self.batch_size))


def resolve_backprop_from(config: TrainConfig, backbone_name: str | None) -> str | None:
    """The layer to train from: ``backprop_from`` unless "auto" (paper's choice per backbone)."""
    if config.backprop_from != "auto":
        return config.backprop_from
    return PAPER_BACKPROP_FROM.get(backbone_name or "")
