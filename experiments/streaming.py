"""Any TFDS data set prepared in array_record, streamed: never read whole.

A :class:`StreamedSplit` reads examples by index from a TFDS data source
(random access into array_record files), decodes and transforms them in a pool
of worker threads (PIL's decoding and resizing and array_record's reads
release the GIL) and stacks them into fixed-size uint8 batches. Only the
batches in flight live in memory. :func:`prefetch` keeps a few ready batches
(already placed on the devices) ahead of the training loop.

Views, from a stream of random numbers fixed by the caller (so a resumed
epoch repeats exactly), of two kinds:

* ``'inception'`` (images of varying or large size, e.g. ImageNet): training
  takes a random-resized crop (8-100% of the area, aspect ratio 3/4 to 4/3)
  with a horizontal flip; evaluation resizes the shorter side to
  ``image_size / 0.875`` and takes the central ``image_size`` square.
* ``'pad_crop'`` (small images of one size, e.g. SVHN or CIFAR prepared by
  TFDS): evaluation is the whole image (resized to ``image_size`` if it
  differs); training pads it by 4, crops at random and flips, as CIFAR
  training does.

Prepare a data set once with TFDS's command line, e.g. ``tfds build
imagenet2012 --file_format=array_record --data_dir=DIR`` (ImageNet's archives
must be in TFDS's manual directory), then train with ``--dataset imagenet2012
--data_dir DIR --image_size 224``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Optional

import numpy as np

CROP_FRACTION = 0.875  # evaluation: the central 87.5% after resizing, as for ImageNet
NORMALIZATION_SAMPLE = 512  # training examples that set the per-channel mean and std


def _pil():
  import PIL.Image  # pylint: disable=g-import-not-at-top
  return PIL.Image


def _resize(image: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float]
            ) -> np.ndarray:
  """The ``box`` (left, top, right, bottom) of ``image [H, W, C]`` resized to ``size`` (w, h)."""
  Image = _pil()
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(pil.resize(size, resample=Image.BILINEAR, box=box))
  return out[..., None] if channels == 1 else out


def center_crop(image: np.ndarray, image_size: int,
                crop_fraction: float = CROP_FRACTION) -> np.ndarray:
  """Evaluation view: the central ``crop_fraction`` square of the shorter side, resized.

  Same as resizing the shorter side to ``image_size / crop_fraction`` and
  cropping the center ``image_size`` square, in one resampling.
  """
  h, w = image.shape[:2]
  side = min(h, w) * crop_fraction
  top, left = (h - side) / 2, (w - side) / 2
  return _resize(image, (image_size, image_size), (left, top, left + side, top + side))


def random_resized_crop(image: np.ndarray, image_size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """Training view: a random crop of ``scale`` of the area and ``ratio`` aspect, resized, flipped.

  Ten tries to fit a crop inside the image, then the evaluation view (as
  torchvision's and big_vision's Inception crop do).
  """
  h, w = image.shape[:2]
  for _ in range(10):
    area = h * w * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    cw, ch = np.sqrt(area * aspect), np.sqrt(area / aspect)
    if cw <= w and ch <= h:
      left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
      out = _resize(image, (image_size, image_size), (left, top, left + cw, top + ch))
      break
  else:
    out = center_crop(image, image_size, 1.0)
  return out[:, ::-1] if rng.random() < 0.5 else out


def pad_crop_flip(image: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
  """A random crop of ``image [H, W, C]`` zero-padded by ``pad``, flipped half the time."""
  h, w = image.shape[:2]
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  dy, dx = rng.integers(0, 2 * pad + 1, 2)
  out = padded[dy:dy + h, dx:dx + w]
  return out[:, ::-1] if rng.random() < 0.5 else out


@dataclasses.dataclass(frozen=True)
class StreamedSplit:
  """Examples of a TFDS data source, by index; the same interface as ``data.Split``.

  Attributes:
    source: a TFDS data source (``builder.as_data_source(split)``).
    indices: the source's records this split holds, in order.
    image_size: the side of every image it gives.
    channels: the images' channels.
    workers: threads that read, decode and transform examples.
    views: ``'inception'`` or ``'pad_crop'`` (module docstring).
    image_key, label_key: the features holding the image and its label.
  """
  source: Any
  indices: np.ndarray
  image_size: int
  channels: int
  workers: int
  image_key: str = 'image'
  label_key: str = 'label'
  views: str = 'inception'

  def __len__(self) -> int:
    return len(self.indices)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, self.channels)

  def take(self, idx: np.ndarray) -> StreamedSplit:
    """The examples ``idx`` of this split (nothing is read)."""
    return dataclasses.replace(self, indices=self.indices[np.asarray(idx)])

  def read(self, idx: np.ndarray, rng: Optional[np.random.Generator] = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Examples ``idx``: ``(images [n, S, S, C] uint8, labels [n] int32)``.

    With ``rng`` the training view of each example (one child stream per
    example, so the result does not depend on the thread that made it),
    without it the evaluation view.
    """
    records = self.indices[np.asarray(idx)]
    streams = (rng.spawn(len(records)) if rng is not None else [None] * len(records))

    def one(record: int, stream: Optional[np.random.Generator]):
      example = self.source[int(record)]
      image = np.asarray(example[self.image_key])
      if image.ndim == 2:
        image = image[..., None]
      if self.views == 'pad_crop':
        view = (image if image.shape[:2] == (self.image_size, self.image_size) else
                center_crop(image, self.image_size, crop_fraction=1.0))
        if stream is not None:
          view = pad_crop_flip(view, stream)
      elif stream is None:
        view = center_crop(image, self.image_size)
      else:
        view = random_resized_crop(image, self.image_size, stream)
      return view, int(example[self.label_key])

    pool = _pool(self.workers)
    examples = list(pool.map(one, records, streams)) if pool else list(map(one, records, streams))
    if not examples:
      raise ValueError('read() needs at least one index.')
    return (np.stack([e[0] for e in examples]),
            np.asarray([e[1] for e in examples], np.int32))


_POOLS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}


def _pool(workers: int) -> Optional[concurrent.futures.ThreadPoolExecutor]:
  if workers <= 1:
    return None
  if workers not in _POOLS:
    _POOLS[workers] = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix='data')
  return _POOLS[workers]


def default_workers() -> int:
  return max(1, min(8, os.cpu_count() or 1))


def find_builder(name: str, data_dir: str):
  """The TFDS builder of ``name`` (``name`` or ``name:version``) prepared under ``data_dir``.

  Reads the prepared files only (``tfds.builder_from_directory``), so data
  sets whose builder code is not registered (or needs TensorFlow) work too.

  Raises:
    FileNotFoundError: with the command that prepares it.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  base, _, version = name.partition(':')
  root = pathlib.Path(data_dir).expanduser() / base
  versions = sorted((p.parent for p in root.glob('*/dataset_info.json')
                     if not version or p.parent.name == version),
                    key=lambda p: tuple(int(v) for v in p.name.split('.') if v.isdigit()))
  if not versions:
    raise FileNotFoundError(
        f'no prepared TFDS data set {name!r} under {root.parent} (looked for '
        f'{root}/<version>/dataset_info.json). Prepare it once with `tfds build {base} '
        f'--file_format=array_record --data_dir={root.parent}`, or pass the --data_dir that '
        'holds it.')
  builder = tfds.builder_from_directory(str(versions[-1]))
  file_format = str(getattr(builder.info.file_format, 'value', builder.info.file_format))
  if 'array_record' not in file_format:
    raise ValueError(
        f'{name!r} under {versions[-1]} is stored as {file_format}, which cannot be read by '
        f'index; prepare it again with `tfds build {base} --file_format=array_record`.')
  return builder


def splits(builder) -> tuple[str, str]:
  """The (training, held-out) split names: ``validation`` when there is no ``test``."""
  names = set(builder.info.splits.keys())
  if 'train' not in names:
    raise ValueError(f'{builder.info.name} has no train split (it has {sorted(names)}).')
  for held_out in ('test', 'validation'):
    if held_out in names:
      return 'train', held_out
  raise ValueError(f'{builder.info.name} has no test or validation split (it has {sorted(names)}).')


def open_split(builder, split: str, image_size: int, workers: int) -> StreamedSplit:
  source = builder.as_data_source(split=split)
  image_key, label_key = builder.info.supervised_keys or ('image', 'label')
  shape = builder.info.features[image_key].shape
  # Small images of one size (up to 64 pixels a side) get CIFAR's views, the rest Inception's.
  small = None not in shape[:2] and max(shape[:2]) <= 64
  return StreamedSplit(source, np.arange(len(source)), image_size, shape[-1] or 3, workers,
                       image_key, label_key, 'pad_crop' if small else 'inception')


def channel_statistics(split: StreamedSplit, seed: int = 0, chunk: int = 64
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std in [0, 1] of a fixed sample's evaluation views.

  Read ``chunk`` examples at a time, so memory stays bounded by one chunk.
  """
  n = min(NORMALIZATION_SAMPLE, len(split))
  idx = np.sort(np.random.default_rng(seed).choice(len(split), n, replace=False))
  total: Any = 0.0  # per channel from the first chunk on
  squares: Any = 0.0
  count = 0.0
  for start in range(0, n, chunk):
    images, _ = split.read(idx[start:start + chunk])
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    total, squares, count = total + pixels.sum(0), squares + (pixels ** 2).sum(0), count + len(pixels)
  mean = total / count
  std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
  return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)


class prefetch:  # pylint: disable=invalid-name
  """Runs ``batches`` in a background thread, ``size`` items ahead; an iterator.

  ``place`` (e.g. putting a batch on the devices) runs in that thread too. An
  exception in the thread reaches the consumer at the item where it happened.
  ``close()`` (also on ``with`` exit) stops the thread without reading the rest.
  """

  _DONE = object()

  def __init__(self, batches: Iterator, size: int = 2, place: Callable = lambda b: b):
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(batches, place), daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _run(self, batches, place):
    try:
      for batch in batches:
        if not self._put(('ok', place(batch))):
          return
    except BaseException as e:  # pylint: disable=broad-except
      self._put(('error', e))
      return
    self._put(('ok', self._DONE))

  def __iter__(self):
    return self

  def __next__(self):
    kind, item = self._queue.get()
    if kind == 'error':
      self.close()
      raise item
    if item is self._DONE:
      self.close()
      raise StopIteration
    return item

  def close(self) -> None:
    self._stop.set()
    while True:
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
