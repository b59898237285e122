"""Node features: openSMILE LLDs, self-supervised frame embeddings or precomputed arrays.

One package, one module per job:

- :mod:`.config`: :class:`FeatureConfig` (the ``features:`` node of the run config, and the
  settings of every extractor), :class:`FeatureError`;
- :mod:`.audio`: decoding, mono mixdown, resampling, duration, checks (:func:`load_mono`);
- :mod:`.opensmile`: openSMILE LLDs and functionals (feature sets and sizes documented there);
- :mod:`.ssl`: wav2vec 2.0 / HuBERT / WavLM frame embeddings through ``transformers``;
- :mod:`.precomputed`: one ``[frames, dims]`` array per utterance from another front end;
- :mod:`.pooling`: frames into nodes, by count or by time;
- :mod:`.hashing`: content hashes of folders (:func:`folder_sha256`; a file's is
  :func:`sergraph.io.file_sha256`) and atomic ``.npy`` writes;
- :mod:`.cache`: :class:`FeatureCache`, the content-addressed on-disk cache of all of them.

Every public name of the former single module is importable from here.
"""

from sergraph.data.features.audio import audio_info, load_mono, resample
from sergraph.data.features.cache import CacheStats, FeatureCache
from sergraph.data.features.config import (
    FEATURE_SETS,
    FUNCTIONAL_SETS,
    OPENSMILE_SETS,
    FeatureConfig,
    FeatureError,
    PrecomputedConfig,
    SSLConfig,
    check_positive_int,
)
from sergraph.data.features.hashing import folder_sha256
from sergraph.data.features.opensmile import (
    RECIPE_VERSION,
    extract_functionals,
    extract_llds,
    feature_names,
    functional_names,
    num_features,
    opensmile_version,
)
from sergraph.data.features.pooling import pool_by_time, pool_frames
from sergraph.io import file_sha256

__all__ = [
    "FEATURE_SETS",
    "FUNCTIONAL_SETS",
    "OPENSMILE_SETS",
    "RECIPE_VERSION",
    "CacheStats",
    "FeatureCache",
    "FeatureConfig",
    "FeatureError",
    "PrecomputedConfig",
    "SSLConfig",
    "audio_info",
    "check_positive_int",
    "extract_functionals",
    "extract_llds",
    "feature_names",
    "file_sha256",
    "folder_sha256",
    "functional_names",
    "load_mono",
    "num_features",
    "opensmile_version",
    "pool_by_time",
    "pool_frames",
    "resample",
]
