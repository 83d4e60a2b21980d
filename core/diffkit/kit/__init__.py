"""The domain kit: what every domain plugin needs besides its network, data reader, writers and
metrics, written once in the core.

* :mod:`~diffkit.kit.cache`: the one cache folder (``$DIFFKIT_CACHE_DIR`` or ``data.cache_dir``).
* :mod:`~diffkit.kit.files`: atomic writes, and the output policy: outputs are never overwritten,
  and writers return typed :class:`Output` records (the runner shows them in TensorBoard by kind);
  samples' file names numbered alike in every domain (:func:`numbered_names`).
* :mod:`~diffkit.kit.frechet`: the Fréchet distance between Gaussian fits of two feature sets
  (with a :class:`FewSamplesWarning` when a set has no more vectors than features).
* :mod:`~diffkit.kit.reference`: a reference network (e.g. a classifier whose features the
  Fréchet distance uses) trained once per reference set and cached by a hash of its inputs.
* :mod:`~diffkit.kit.store`: decoded data sets on disk, filled once by worker processes and read
  through memory maps, so that every process of a machine shares one copy in the page cache.
* :mod:`~diffkit.kit.conditions`: class labels and continuous values as conditions, their null
  values and per-sample lists, parsed the same way for every domain.
* :mod:`~diffkit.kit.reconstruction`: reconstruction losses for autoencoders (pixel, Laplacian
  pyramid, multi-resolution STFT), one value per sample.
"""

from .cache import cache_dir
from .conditions import NULL_LABEL, draw_labels, is_unconditional, label_texts, parse_labels, parse_values
from .files import (Output, OutputExistsError, check_new, numbered_names, outputs_of, save_torch_atomic, write_atomic,
                    write_new)
from .frechet import FewSamplesWarning, frechet_distance, gaussian_frechet_distance
from .reference import cached_network, content_key
from .store import ItemStore, Skip, in_shards, map_array, open_store

__all__ = [
    "FewSamplesWarning", "ItemStore", "NULL_LABEL", "Output", "OutputExistsError", "Skip", "cache_dir",
    "cached_network", "check_new", "content_key", "draw_labels", "frechet_distance", "gaussian_frechet_distance",
    "in_shards", "is_unconditional", "label_texts", "map_array", "numbered_names", "open_store", "outputs_of",
    "parse_labels", "parse_values", "save_torch_atomic", "write_atomic", "write_new",
]
