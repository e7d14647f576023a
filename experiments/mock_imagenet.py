"""Writes an ImageNet-like TFDS data set: JPEG images of varying sizes, in array_record.

  python -m experiments.mock_imagenet --data_dir DIR [--num_train 2000] [--num_classes 10]

Then ``python -m experiments.train --dataset mock_imagenet --data_dir DIR
--image_size 64`` streams it as it would ImageNet. Each class has its own
colour and stripe frequency under noise, so a network can learn it; sizes
vary from ``min_side`` to ``max_side`` pixels per side. Encoding needs only
PIL (TFDS stores the JPEG bytes it is given).
"""

from __future__ import annotations

import argparse
import io
import pathlib

import numpy as np

NAME = 'mock_imagenet'


def _image(rng: np.random.Generator, label: int, num_classes: int, min_side: int,
           max_side: int) -> bytes:
  import PIL.Image  # pylint: disable=g-import-not-at-top

  h, w = rng.integers(min_side, max_side + 1, 2)
  colour = np.array([(label * 97) % 256, (label * 57 + 80) % 256, (label * 131 + 160) % 256])
  stripes = np.sin(np.arange(w) * (1 + label) * np.pi / max(num_classes, 1))[None, :, None]
  pixels = colour * (0.6 + 0.3 * stripes) + rng.normal(0, 25, (h, w, 3))
  buffer = io.BytesIO()
  PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format='JPEG',
                                                                       quality=90)
  return buffer.getvalue()


def write(data_dir: str, *, num_train: int = 2000, num_test: int = 500, num_classes: int = 10,
          min_side: int = 48, max_side: int = 160, dataset_name: str = NAME, seed: int = 0,
          fixed_size: bool = False):
  """Prepares the data set under ``data_dir`` (if not there yet) and returns its builder.

  ``fixed_size``: every image is ``min_side`` square and the feature says so (a
  small-image data set such as SVHN; it gets CIFAR's views when streamed).
  """
  if fixed_size:
    max_side = min_side
  image_shape = (min_side, min_side, 3) if fixed_size else (None, None, 3)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class MockImagenet(tfds.core.GeneratorBasedBuilder,  # type: ignore[call-arg]
                     skip_registration=True):
    name = dataset_name
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=image_shape, encoding_format='jpeg'),
              'label': tfds.features.ClassLabel(num_classes=num_classes),
          }),
          supervised_keys=('image', 'label'))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples(num_train, 1),
              'validation': self._generate_examples(num_test, 2)}

    def _generate_examples(self, n, split_seed):
      rng = np.random.default_rng([seed, split_seed])
      for i in range(n):
        label = int(rng.integers(num_classes))
        yield i, {'image': io.BytesIO(_image(rng, label, num_classes, min_side, max_side)),
                  'label': label}

  builder = MockImagenet(data_dir=str(pathlib.Path(data_dir).expanduser()), file_format='array_record')
  if not builder.is_prepared():
    builder.download_and_prepare()
  return builder


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--num_train', type=int, default=2000)
  parser.add_argument('--num_test', type=int, default=500)
  parser.add_argument('--num_classes', type=int, default=10)
  parser.add_argument('--min_side', type=int, default=48)
  parser.add_argument('--max_side', type=int, default=160)
  args = parser.parse_args(argv)
  builder = write(args.data_dir, num_train=args.num_train, num_test=args.num_test,
                  num_classes=args.num_classes, min_side=args.min_side, max_side=args.max_side)
  print(f'{builder.info.name} in {builder.data_dir}: '
        + ', '.join(f'{k} {v.num_examples}' for k, v in builder.info.splits.items()))


if __name__ == '__main__':
  main()
