"""The configuration schema: the typed sections (OmegaConf structured dataclasses), their
choices and :class:`ConfigError`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sergraph.data.features.config import FeatureConfig

GROUPS = ("data", "model", "trainer")
ON_ERROR_CHOICES = ("stop", "skip")
FUSIONS = ("svm",)  # model.fusion besides null; see sergraph.training.fusion
#: ``graph.normalize``: z-score the node features (whose statistics ``eval.protocol`` decides)
#: or not at all.
GRAPH_NORMALIZE = ("zscore", "none")
DEFAULT_GROUPS = {"data": "synthetic", "model": "lstm_gin", "trainer": "default"}


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""


@dataclass
class DataConfig:
    name: str = "synthetic"
    root: str | None = None
    classes: list[str] | None = None
    merge: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


# The one features configuration: the same class the extractors and the cache take.
FeaturesConfig = FeatureConfig


@dataclass
class GraphConfig:
    k: int = 4
    max_nodes: int | None = 120
    pad: bool = True
    # zscore: z-score the node features (whose statistics: eval.protocol, never this key) |
    # none: leave them as extracted.
    normalize: str = "zscore"
    # Dilated temporal edges: node i joined to i-d and i+d for every d listed (positive, unique,
    # each < max_nodes), INSTEAD of the k-nearest band; graph.k is then not used for edges.
    # null: the k band.
    dilations: list[int] | None = None


@dataclass
class EvalConfig:
    """The evaluation protocol (see :mod:`sergraph.data.protocol`)."""

    # The one key for whose unlabelled audio shapes normalisation: inductive (the training
    # speakers' only) | enrollment (plus a held-aside, never-scored part of each held-out
    # speaker) | transductive (all of a held-out speaker's audio, the scored part included).
    # Optional only so that an old null is refused with a message (sergraph.config.validation).
    protocol: str | None = "inductive"
    # enrollment: per validation/test speaker, a fraction in (0, 1) or a count >= 1 of its
    # utterances held aside (label-free, seeded), used unlabelled for its statistics, never scored.
    enrollment: float = 0.2
    enrollment_seed: int = 0


@dataclass
class FoldsConfig:
    scheme: str = "loso"
    val_speakers: int = 1
    n_groups: int = 5
    seed: int = 0
    only: list[int] | None = None
    # scheme=predefined: the corpus column holding each utterance's test fold (0, 1, ...).
    column: str = "fold"
    # scheme=predefined: accept folds whose speakers overlap between train/val/test (benchmark
    # splits that are not speaker-independent; every output then says so).
    allow_speaker_overlap: bool = False


@dataclass
class ModelConfig:
    # The run's model name (run folders, labels); a registered family or a preset's own name.
    name: str = "lstm_gin"
    # The registered family that builds it (null: the family named ``name``). A preset in
    # configs/model/ names its family here and writes out the defaults it changes in params.
    family: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    # Late fusion of a neural model (null: none): "svm" fuses its probabilities with those of a
    # linear SVM on the same utterance functionals, weighted on the validation speakers
    # (sergraph.training.fusion).
    fusion: str | None = None


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-8
    batch_size: int = 32
    class_weights: bool = False
    label_smoothing: float = 0.0
    optimizer: str = "adam"  # adam (L2 weight decay, the paper) | adamw (decoupled)
    schedule: str = "constant"  # constant | cosine (to 0 at trainer.max_epochs), per epoch
    warmup_epochs: int = 0  # linear warm-up from lr/(warmup+1) before the schedule
    # > 0: domain-adversarial training against the training speakers: the classifier's input
    # goes through a gradient reversal layer (gradient times -speaker_adversary) into a speaker
    # classifier; the training loss is emotion CE + speaker CE (training batches only).
    speaker_adversary: float = 0.0
    # shuffle: each epoch a permutation of the training graphs | speaker_balanced: each epoch
    # len(train) draws with replacement, every training speaker equally likely (uniform within
    # a speaker); single-process runs only (refused under DDP)
    sampler: str = "shuffle"


@dataclass
class AugmentConfig:
    """Training-fold augmentation of the node features (never applied to val/test)."""

    noise: float = 0.0  # std of Gaussian noise added to the (normalised) node features
    time_mask: int = 0  # zero one span of up to this many nodes per training graph
    feature_mask: int = 0  # zero one band of up to this many node features per training graph
    # > 0: mixup of the classifier inputs with lam ~ Beta(mixup, mixup) per training batch
    mixup: float = 0.0


@dataclass
class TrainerConfig:
    max_epochs: int = 200
    min_epochs: int = 1
    patience: int = 20
    # false: no early stopping; the last epoch's model is tested (needed with
    # folds.val_speakers=0, where there is no validation to stop on or to choose the best epoch)
    early_stopping: bool = True
    accelerator: str = "auto"
    # Processes per node and nodes. Inside a SLURM job step (srun) both are taken from SLURM
    # (--ntasks-per-node, --nodes) instead, see sergraph.training.distributed.trainer_topology.
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ddp_find_unused_parameters_true | ...
    precision: str = "32-true"
    deterministic: bool = True
    num_workers: int = 0
    progress_bar: bool = False
    # Seconds between a cell's resume points (last.ckpt, written at the end of an epoch) at
    # most: a stop or a fault loses about this much work, or one epoch where epochs are longer.
    # 0: every epoch. One is also written at every epoch that writes best.ckpt. Speed only:
    # not part of a run's identity.
    resume_every_s: float = 10.0


@dataclass
class RunConfig:
    name: str | None = None
    label: str | None = None
    out_dir: str = "runs"
    seeds: list[int] = field(default_factory=lambda: [0])
    # Cells run at a time, each in its own process: a number, or auto (the default): on the
    # CPU the allotted cores divided by the threads per cell (run.threads, else
    # OMP_NUM_THREADS, else 1), within the memory and the study's unfinished cells; with CUDA
    # one per visible GPU; 1 where each cell trains on several processes (DDP, srun tasks) or
    # models or metrics were registered in this process at run time (a notebook's class).
    # Speed only: not part of a run's identity.
    parallel: Any = "auto"
    # torch threads of each process (null: the cores this process may use, from
    # SLURM_CPUS_PER_TASK or the affinity mask, divided by run.parallel; OMP_NUM_THREADS, where
    # set, wins over that default). Speed only: not part of a run's identity.
    threads: int | None = None
    cell: int | None = None
    # Only these variants of an experiment (all when null): run part of a committed study
    # without editing its file.
    variants: list[str] | None = None
    # Set by compose (never by hand): config file (relative to the config folder) -> SHA-256 of
    # every file that composed this configuration; recorded in each result's provenance.
    sources: dict[str, str] = field(default_factory=dict)


@dataclass
class LoggerConfig:
    kind: str = "csv"
    project: str = "sergraph"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    offline: bool = False


@dataclass
class SlurmConfig:
    """What `sergraph slurm` writes into the sbatch scripts (never part of a run's identity)."""

    partition: str | None = None
    account: str | None = None
    time: str = "04:00:00"  # per job (array task, DDP job); HH:MM:SS or D-HH:MM:SS
    gpus: int = 1  # GPUs per array task; GPUs per node for train_ddp (0: CPU only)
    nodes: int = 1  # nodes of train_ddp
    tasks_per_node: int | None = None  # processes per node of train_ddp; default: one per GPU
    cpus_per_task: int = 4
    mem: str | None = None  # e.g. 32G; null: the partition's default
    # A shell line run before sergraph, e.g. "conda activate sergraph" or ". ~/sg/.venv/bin/activate"
    activate: str | None = None
    signal_seconds: int = 90  # SIGUSR1 this many seconds before the time limit: save and requeue
    max_running: int | None = None  # array throttle (%N): at most N cells at a time
    feature_shards: int = 8  # array size of features.sbatch
    log_dir: str | None = None  # job scripts and output files; default: <study dir>/slurm
    extra: list[str] = field(default_factory=list)  # more #SBATCH options, e.g. ["--qos=long"]


@dataclass
class CrossCorpusConfig:
    """Cross-corpus studies (sergraph.data.cross_corpus); both unset: within one corpus."""

    # Train on every speaker of `data` (validation speakers from it too), test on every
    # utterance of this corpus: {data: NAME (a configs/data/ file) or a data mapping, name: what
    # prefixes its speakers (default its data.name), root/options/classes/merge: overrides of
    # its data keys, label_map: {ITS_CLASS: TRAINING_CLASS}, drop: [ITS_CLASS, ...]}.
    test: dict[str, Any] | None = None
    # Leave one corpus out: two or more corpora written as `test` is; each is tested once (a
    # fold) by a model trained on all the others, each mapped into one label set (`classes`).
    corpora: list[Any] = field(default_factory=list)
    # `corpora` only: the label set every corpus is mapped into (null: the first corpus's).
    classes: list[str] | None = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    cross_corpus: CrossCorpusConfig = field(default_factory=CrossCorpusConfig)
    variants: dict[str, list[str]] = field(default_factory=dict)
    # A grid (key -> values): its cross product becomes variants labelled by their settings
    # (k=2,readout=sum), as `sergraph train -m KEY=a,b` does; see sergraph.config.labels.
    # Not part of any run's identity.
    grid: dict[str, list[Any]] = field(default_factory=dict)
    # The study's declared baseline label: `sergraph report` pairs every row with it (never a
    # row chosen by a test score). Not part of any run's identity.
    reference: str | None = None
    # Each variant's declared no-graph (or other) control: label -> control label. `sergraph
    # report` pairs every such label with its control (as well as with the reference). Not part
    # of any run's identity.
    controls: dict[str, str] = field(default_factory=dict)
