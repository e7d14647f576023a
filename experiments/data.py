"""Image classification data on TensorFlow Datasets, without TensorFlow.

Datasets are prepared by our own TFDS builders into array_record files and read
back through TFDS's random-access data source, so neither TensorFlow nor a
download is needed where the files are at hand:

* ``fashion_mnist`` (default): the four standard IDX files from a directory you
  name, the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``), or downloaded where a network exists.
* ``cifar10``, ``cifar100``: the standard python-version archives
  (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``) from a directory you
  name, or downloaded where a network exists.
* ``digits``: scikit-learn's bundled 8x8 digits with a fixed 80/20 split.

:func:`load` returns these four as in-memory uint8 arrays (they fit in memory
several times over). Any other TFDS data set prepared in array_record under
``data_dir`` (ImageNet, ...) is streamed instead: read by index, decoded and
transformed in worker threads, never whole (:mod:`experiments.streaming`).
:func:`train_batches` and :func:`eval_batches` iterate over either kind.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib
import pickle
import tarfile
import urllib.request
import zlib
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np

from experiments import streaming

DATASETS = ('fashion_mnist', 'cifar10', 'cifar100', 'digits')
DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
DEFAULT_DATA_DIR = os.path.expanduser(os.environ.get('ANYTIME_JAX_DATA', '~/.cache/anytime_jax'))

_FASHION_FILES = {
    'train_images': 'train-images-idx3-ubyte.gz', 'train_labels': 'train-labels-idx1-ubyte.gz',
    'test_images': 't10k-images-idx3-ubyte.gz', 'test_labels': 't10k-labels-idx1-ubyte.gz'}
_FASHION_URL = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'
_CIFAR = {
    'cifar10': ('cifar-10-python.tar.gz', 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'),
    'cifar100': ('cifar-100-python.tar.gz', 'https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz'),
}
HOW_TO_GET = {
    'fashion_mnist': ('install the Debian package (apt-get install dataset-fashion-mnist), or put '
                      f'{", ".join(_FASHION_FILES.values())} in a directory and pass it as '
                      'source_dir (--source_dir), or run where the network is reachable'),
    'cifar10': ('put cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) in a '
                'directory and pass it as source_dir (--source_dir), or run where the network is '
                'reachable'),
    'cifar100': ('put cifar-100-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) in a '
                 'directory and pass it as source_dir (--source_dir), or run where the network is '
                 'reachable'),
    'digits': 'pip install scikit-learn',
}


class DatasetUnavailableError(RuntimeError):
  """The dataset's files are neither prepared nor found; the message says how to get them."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in memory: images ``[N, H, W, C]`` uint8, labels ``[N]`` int32.

  Streamed splits (:class:`experiments.streaming.StreamedSplit`) have the same
  ``len``, ``image_shape``, ``take`` and ``read``.
  """
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])  # type: ignore[return-value, unused-ignore]

  def take(self, idx: np.ndarray) -> Split:
    return Split(self.images[idx], self.labels[idx])

  def read(self, idx: np.ndarray, rng: Optional[np.random.Generator] = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Examples ``idx``; with ``rng``, augmented (random crop with zero padding 4, flip)."""
    images = self.images[idx]
    return (augment(images, rng) if rng is not None else images), self.labels[idx]


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train and test splits and what the model needs to know about them."""
  name: str
  train: Any  # Split or streaming.StreamedSplit
  test: Any
  num_classes: int
  mean: np.ndarray  # per-channel, in [0, 1] units
  std: np.ndarray

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.train.image_shape


# ----- reading the standard formats -----

def read_idx(path: pathlib.Path) -> np.ndarray:
  """Reads a (gzipped) IDX file, the MNIST family's format."""
  opener = gzip.open if str(path).endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
    raise ValueError(f'{path} is not an unsigned-byte IDX file.')
  ndim = data[3]
  if len(data) < 4 + 4 * ndim:
    raise ValueError(f'{path} is truncated: its IDX header is cut short.')
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if array.size != int(np.prod(shape)):
    raise ValueError(f'{path} is truncated: header says {shape}, found {array.size} values.')
  return array.reshape(shape)


def read_cifar_archive(path: pathlib.Path, name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads a CIFAR python-version archive into ``{split: (images NHWC, labels)}``."""
  members = ({'train': [f'data_batch_{i}' for i in range(1, 6)], 'test': ['test_batch']}
             if name == 'cifar10' else {'train': ['train'], 'test': ['test']})
  label_key = b'labels' if name == 'cifar10' else b'fine_labels'
  out = {}
  with tarfile.open(path, 'r:gz') as tar:
    files = {pathlib.PurePosixPath(m.name).name: m for m in tar.getmembers() if m.isfile()}
    for split, names in members.items():
      images, labels = [], []
      for member in names:
        if member not in files:
          raise ValueError(f'{path} lacks {member}; is it the python version of {name}?')
        batch = pickle.load(tar.extractfile(files[member]),  # type: ignore[arg-type]
                            encoding='bytes')
        images.append(np.asarray(batch[b'data'], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[label_key], np.int64))
      out[split] = (np.concatenate(images), np.concatenate(labels))
  return out


def _download(url: str, target: pathlib.Path, timeout: float = 10.0) -> pathlib.Path:
  """One attempt, short timeout: offline machines fail in seconds, not minutes."""
  target.parent.mkdir(parents=True, exist_ok=True)
  partial = target.with_suffix(target.suffix + '.part')
  with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, 'wb') as f:
    while chunk := response.read(1 << 20):
      f.write(chunk)
  partial.replace(target)
  return target


def _find(names: list[str], dirs: list[Optional[str]]) -> Optional[pathlib.Path]:
  for d in dirs:
    if d and all((pathlib.Path(d) / n).is_file() for n in names):
      return pathlib.Path(d)
  return None


def _raw_examples(name: str, source_dir: Optional[str], download_dir: pathlib.Path):
  """``{split: (images, labels)}`` from local files, or downloaded as a last resort."""
  if name == 'digits':
    try:
      from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise DatasetUnavailableError(f'digits needs scikit-learn: {HOW_TO_GET["digits"]}.') from e
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    order = np.random.default_rng(0).permutation(len(images))
    cut = int(0.8 * len(images))
    return {'train': (images[order[:cut]], digits.target[order[:cut]]),
            'test': (images[order[cut:]], digits.target[order[cut:]])}
  errors = []
  if name == 'fashion_mnist':
    files = list(_FASHION_FILES.values())
    # A directory the user names is the only place looked at: no silent fallback.
    found = _find(files, [source_dir] if source_dir else [DEBIAN_FASHION_MNIST, str(download_dir)])
    if found is None and source_dir is None:
      try:
        for f in files:
          _download(_FASHION_URL + f, download_dir / f)
        found = download_dir
      except OSError as e:
        errors.append(f'download failed: {e}')
    if found is None:
      where = source_dir or f'{DEBIAN_FASHION_MNIST} or {download_dir}'
      raise DatasetUnavailableError(
          f'fashion_mnist: the files are not in {where} ({"; ".join(errors) or "no download tried"}). '
          f'To get them: {HOW_TO_GET[name]}.')
    read = lambda key: _readable(name, found / _FASHION_FILES[key], read_idx)
    return {s: (read(f'{s}_images')[..., None], read(f'{s}_labels')) for s in ('train', 'test')}
  archive, url = _CIFAR[name]
  found = _find([archive], [source_dir] if source_dir else [str(download_dir)])
  if found is None and source_dir is None:
    try:
      found = _download(url, download_dir / archive).parent
    except OSError as e:
      errors.append(f'download failed: {e}')
  if found is None:
    raise DatasetUnavailableError(
        f'{name}: {archive} is not in {source_dir or download_dir} '
        f'({"; ".join(errors) or "no download tried"}). To get it: {HOW_TO_GET[name]}.')
  return _readable(name, found / archive, lambda path: read_cifar_archive(path, name))


def _readable(name: str, path: pathlib.Path, reader):
  """``reader(path)``, or a :class:`DatasetUnavailableError` naming the file and the fix."""
  try:
    return reader(path)
  except (OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError, tarfile.TarError,
          zlib.error) as e:
    raise DatasetUnavailableError(
        f'{name}: {path} is truncated or corrupt ({type(e).__name__}: {e}). Replace it: '
        f'{HOW_TO_GET[name]}.') from e


# ----- TFDS builders (array_record, no TensorFlow) -----

_NUM_CLASSES = {'fashion_mnist': 10, 'cifar10': 10, 'cifar100': 100, 'digits': 10}
_SHAPES = {'fashion_mnist': (28, 28, 1), 'cifar10': (32, 32, 3), 'cifar100': (32, 32, 3),
           'digits': (8, 8, 1)}


def _builder_class(name: str):
  """A TFDS builder for ``name`` that reads the files through :func:`_raw_examples`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if name in _BUILDERS:
    return _BUILDERS[name]

  class Builder(tfds.core.GeneratorBasedBuilder,  # type: ignore[call-arg]
                skip_registration=True):
    VERSION = tfds.core.Version('1.0.0')

    def __init__(self, *, source_dir=None, **kwargs):
      self._source_dir = source_dir
      super().__init__(file_format='array_record', **kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Tensor(shape=_SHAPES[name], dtype=np.uint8),
              'label': tfds.features.ClassLabel(num_classes=_NUM_CLASSES[name]),
          }),
          supervised_keys=('image', 'label'))

    def _split_generators(self, dl_manager):
      del dl_manager
      raw = _raw_examples(name, self._source_dir, pathlib.Path(self.data_dir).parents[1] / 'downloads')
      return {split: self._generate_examples(*arrays) for split, arrays in raw.items()}

    def _generate_examples(self, images, labels):
      for i, (image, label) in enumerate(zip(images, labels)):
        yield i, {'image': image, 'label': int(label)}

  Builder.name = f'anytime_{name}'
  _BUILDERS[name] = Builder
  return Builder


_BUILDERS: dict = {}


def prepare(name: str, data_dir: str = DEFAULT_DATA_DIR, source_dir: Optional[str] = None):
  """Prepares ``name`` as array_record under ``data_dir`` (once) and returns its builder."""
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; choose one of {", ".join(DATASETS)}.')
  builder = _builder_class(name)(data_dir=data_dir, source_dir=source_dir)
  if not builder.is_prepared():
    builder.download_and_prepare()
  return builder


def _read_split(builder, split: str) -> Split:
  source = builder.as_data_source(split=split)
  examples = source.__getitems__(list(range(len(source))))
  images = np.stack([e['image'] for e in examples])
  labels = np.asarray([e['label'] for e in examples], np.int32)
  return Split(images, labels)


def load(name: str = 'fashion_mnist', data_dir: str = DEFAULT_DATA_DIR,
         source_dir: Optional[str] = None, *, image_size: Optional[int] = None,
         workers: Optional[int] = None) -> Dataset:
  """Prepares (first time only) and loads a dataset's train and test splits.

  Args:
    name: one of ``DATASETS`` (read into memory), or any TFDS data set prepared
      in array_record under ``data_dir`` (``name`` or ``name:version``),
      streamed; its test split is ``test``, else ``validation``.
    data_dir: where the prepared TFDS files live.
    source_dir: a directory holding the dataset's standard files (IDX files
      for Fashion-MNIST, the python-version archive for CIFAR).
    image_size: streamed data sets: the side of the square images the splits
      give (default 224). Not for ``DATASETS``, whose size is fixed.
    workers: streamed data sets: threads reading and decoding examples.

  Raises:
    DatasetUnavailableError: within seconds, with the way to get the files.
  """
  if name not in DATASETS:
    return _load_streamed(name, data_dir, image_size or 224,
                          workers or streaming.default_workers())
  if image_size is not None and image_size != _SHAPES[name][0]:
    raise ValueError(f'{name} images are {_SHAPES[name][0]}x{_SHAPES[name][1]}; --image_size '
                     'applies to streamed data sets only.')
  builder = prepare(name, data_dir, source_dir)
  train, test = _read_split(builder, 'train'), _read_split(builder, 'test')
  pixels = train.images.reshape(-1, train.images.shape[-1]).astype(np.float64) / 255.0
  return Dataset(name, train, test, _NUM_CLASSES[name], pixels.mean(0).astype(np.float32),
                 pixels.std(0).astype(np.float32))


def _load_streamed(name: str, data_dir: str, image_size: int, workers: int) -> Dataset:
  try:
    builder = streaming.find_builder(name, data_dir)
  except FileNotFoundError as e:
    raise DatasetUnavailableError(f'{e} Known without preparing: {", ".join(DATASETS)}.') from e
  train_name, test_name = streaming.splits(builder)
  train = streaming.open_split(builder, train_name, image_size, workers)
  test = streaming.open_split(builder, test_name, image_size, workers)
  mean, std = streaming.channel_statistics(train)
  return Dataset(name, train, test, builder.info.features[train.label_key].num_classes, mean, std)


# ----- batching -----

def normalize(images: np.ndarray, dataset: Dataset) -> np.ndarray:
  """uint8 ``[B, H, W, C]`` to float32, per-channel standardized."""
  return ((images.astype(np.float32) / 255.0) - dataset.mean) / dataset.std


def augment(images: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
  """Random crop (zero padding ``pad``) and horizontal flip, as for CIFAR."""
  n: int
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  dy, dx = rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2 * pad + 1, n)
  rows = dy[:, None] + np.arange(h)[None]
  cols = dx[:, None] + np.arange(w)[None]
  out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  flip = rng.random(n) < 0.5
  out[flip] = out[flip, :, ::-1]
  return out


def num_train_batches(dataset: Dataset, batch_size: int) -> int:
  """Steps per epoch: the remainder that does not fill a batch is dropped in training."""
  return len(dataset.train) // batch_size


def train_batches(dataset: Dataset, batch_size: int, *, seed: int, epoch: int,
                  augmentation: bool = False, process_index: int = 0,
                  process_count: int = 1, start: int = 0
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """One epoch of shuffled training batches; the order depends only on (seed, epoch).

  With several processes, each yields its ``batch_size / process_count`` slice
  of every global batch. Augmentation draws from a stream of its own per
  (seed, epoch, process, batch), so processes differ and a resumed epoch
  (``start``: the first batch to yield) repeats exactly what it skipped.
  """
  if batch_size % process_count:
    raise ValueError(f'batch_size {batch_size} does not divide over {process_count} processes.')
  order = np.random.default_rng([seed, epoch]).permutation(len(dataset.train))
  local = batch_size // process_count
  for b in range(start, num_train_batches(dataset, batch_size)):
    idx = order[b * batch_size:(b + 1) * batch_size][process_index * local:(process_index + 1) * local]
    rng = np.random.default_rng([seed, epoch, process_index, b]) if augmentation else None
    images, labels = dataset.train.read(idx, rng)
    yield normalize(images, dataset), labels


def eval_batches(split: Any, dataset: Dataset, batch_size: int, *, process_index: int = 0,
                 process_count: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """The whole split in order, last batch padded: yields (images, labels, mask).

  ``mask`` ``[batch_size]`` marks the real examples of the global batch; with
  several processes, images and labels are this process's slice of it.
  """
  if batch_size % process_count:
    raise ValueError(f'batch_size {batch_size} does not divide over {process_count} processes.')
  local = slice(process_index * batch_size // process_count,
                (process_index + 1) * batch_size // process_count)
  for start in range(0, len(split), batch_size):
    # The padding repeats the last example: only this process's slice is read.
    idx = np.minimum(np.arange(start, start + batch_size), len(split) - 1)[local]
    images, labels = split.read(idx)
    yield normalize(images, dataset), labels, np.arange(start, start + batch_size) < len(split)
