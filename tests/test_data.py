"""Data builders on small files in the standard formats, and the batching."""

import gzip
import io
import pickle
import tarfile
import time

import numpy as np
import pytest

from experiments import data


def _write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(directory, n_train=30, n_test=12, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {'train_images': rng.integers(0, 256, (n_train, 28, 28)),
            'train_labels': np.arange(n_train) % 10,
            'test_images': rng.integers(0, 256, (n_test, 28, 28)),
            'test_labels': np.arange(n_test) % 10}
  for key, name in data._FASHION_FILES.items():
    _write_idx(directory / name, arrays[key])
  return arrays


def _add_pickle(tar, name, obj):
  payload = pickle.dumps(obj)
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def write_cifar(directory, name, per_batch=4, seed=0):
  """A small archive in the python-version format; returns (train, test) as (NHWC, labels)."""
  rng = np.random.default_rng(seed)
  archive, _ = data._CIFAR[name]
  classes = 10 if name == 'cifar10' else 100
  batches = ({'train': [f'data_batch_{i}' for i in range(1, 6)], 'test': ['test_batch']}
             if name == 'cifar10' else {'train': ['train'], 'test': ['test']})
  folder = 'cifar-10-batches-py' if name == 'cifar10' else 'cifar-100-python'
  key = b'labels' if name == 'cifar10' else b'fine_labels'
  out = {}
  with tarfile.open(directory / archive, 'w:gz') as tar:
    for split, members in batches.items():
      images, labels = [], []
      for member in members:
        flat = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        lab = rng.integers(0, classes, per_batch).tolist()
        _add_pickle(tar, f'{folder}/{member}', {b'data': flat, key: lab})
        images.append(flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels += lab
      out[split] = (np.concatenate(images), np.asarray(labels))
  return out


def _as_set(images, labels):
  return sorted((int(l), img.tobytes()) for img, l in zip(images, labels))


def test_fashion_mnist_from_a_directory(tmp_path):
  src = tmp_path / 'src'
  src.mkdir()
  arrays = write_fashion_mnist(src)
  ds = data.load('fashion_mnist', data_dir=str(tmp_path / 'tfds'), source_dir=str(src))
  assert ds.image_shape == (28, 28, 1) and ds.num_classes == 10
  assert len(ds.train) == 30 and len(ds.test) == 12
  assert _as_set(ds.test.images[..., 0], ds.test.labels) == _as_set(arrays['test_images'].astype(np.uint8),
                                                                    arrays['test_labels'])
  np.testing.assert_allclose(ds.mean, arrays['train_images'].mean() / 255, rtol=1e-5)
  # Prepared once: a second load reads the array_record files without the sources.
  for f in src.iterdir():
    f.unlink()
  again = data.load('fashion_mnist', data_dir=str(tmp_path / 'tfds'), source_dir=str(src))
  assert len(again.train) == 30


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_cifar_from_the_python_archive(tmp_path, name):
  written = write_cifar(tmp_path, name)
  ds = data.load(name, data_dir=str(tmp_path / 'tfds'), source_dir=str(tmp_path))
  assert ds.image_shape == (32, 32, 3) and ds.num_classes == (10 if name == 'cifar10' else 100)
  for split in ('train', 'test'):
    got = getattr(ds, split)
    assert _as_set(got.images, got.labels) == _as_set(*written[split])


def test_digits_fixed_split(tmp_path):
  ds = data.load('digits', data_dir=str(tmp_path))
  assert (len(ds.train), len(ds.test)) == (1437, 360)
  assert ds.image_shape == (8, 8, 1) and ds.train.images.max() <= 255
  again = data.load('digits', data_dir=str(tmp_path / 'other'))
  assert _as_set(ds.test.images, ds.test.labels) == _as_set(again.test.images, again.test.labels)


def test_missing_data_fails_fast_with_the_fix(tmp_path):
  start = time.perf_counter()
  with pytest.raises(data.DatasetUnavailableError, match='cifar-10-python.tar.gz.*To get it'):
    data.load('cifar10', data_dir=str(tmp_path / 'tfds'), source_dir=str(tmp_path))
  with pytest.raises(data.DatasetUnavailableError, match='apt-get install dataset-fashion-mnist'):
    data.load('fashion_mnist', data_dir=str(tmp_path / 'tfds'), source_dir=str(tmp_path))
  with pytest.raises(data.DatasetUnavailableError,
                     match='tfds build imagenet2012 --file_format=array_record'):
    data.load('imagenet2012', data_dir=str(tmp_path))
  with pytest.raises(ValueError, match='applies to streamed data sets only'):
    data.load('digits', data_dir=str(tmp_path), image_size=64)
  assert time.perf_counter() - start < 30


def test_corrupt_idx_is_rejected(tmp_path):
  (tmp_path / 'bad.gz').write_bytes(gzip.compress(b'\x00\x00\x08\x03\x00\x00\x00\x05'))
  with pytest.raises(ValueError, match='truncated|IDX'):
    data.read_idx(tmp_path / 'bad.gz')


@pytest.mark.parametrize('damage', ['truncated', 'not_gzip', 'cut_gzip'])
def test_damaged_fashion_mnist_fails_in_seconds_naming_the_file_then_recovers(tmp_path, damage):
  src = tmp_path / 'src'
  src.mkdir()
  write_fashion_mnist(src)
  victim = src / data._FASHION_FILES['train_images']
  good = victim.read_bytes()
  if damage == 'truncated':  # a valid gzip of an IDX file cut short
    victim.write_bytes(gzip.compress(gzip.decompress(good)[:1000]))
  elif damage == 'not_gzip':
    victim.write_bytes(b'<html>404 not found</html>')
  else:  # the download stopped half way
    victim.write_bytes(good[:len(good) // 2])
  start = time.perf_counter()
  with pytest.raises(data.DatasetUnavailableError,
                     match=f'{victim.name} is truncated or corrupt.*Replace it'):
    data.load('fashion_mnist', data_dir=str(tmp_path / 'tfds'), source_dir=str(src))
  assert time.perf_counter() - start < 30
  victim.write_bytes(good)  # the fix the message names works, in the same data_dir
  assert len(data.load('fashion_mnist', data_dir=str(tmp_path / 'tfds'),
                       source_dir=str(src)).train) == 30


def test_damaged_cifar_archive_names_the_file(tmp_path):
  write_cifar(tmp_path, 'cifar10')
  archive = tmp_path / data._CIFAR['cifar10'][0]
  archive.write_bytes(archive.read_bytes()[:200])
  with pytest.raises(data.DatasetUnavailableError, match='cifar-10-python.tar.gz is truncated or '
                     'corrupt.*cifar.html'):
    data.load('cifar10', data_dir=str(tmp_path / 'tfds'), source_dir=str(tmp_path))


def _toy_dataset(n=50):
  images = np.arange(n * 4 * 4, dtype=np.uint8).reshape(n, 4, 4, 1)
  split = data.Split(images, np.arange(n, dtype=np.int32) % 10)
  return data.Dataset('toy', split, data.Split(images[:7], split.labels[:7]), 10,
                      np.float32([0.5]), np.float32([0.25]))


def test_train_batches_are_seeded_and_shard_over_processes():
  ds = _toy_dataset()
  epoch = lambda seed, e, **kw: [y for _, y in data.train_batches(ds, 8, seed=seed, epoch=e, **kw)]
  assert len(epoch(0, 0)) == data.num_train_batches(ds, 8) == 6
  np.testing.assert_array_equal(np.concatenate(epoch(0, 0)), np.concatenate(epoch(0, 0)))
  assert not np.array_equal(np.concatenate(epoch(0, 0)), np.concatenate(epoch(0, 1)))
  halves = [epoch(0, 0, process_index=i, process_count=2) for i in range(2)]
  for whole, a, b in zip(epoch(0, 0), *halves):
    np.testing.assert_array_equal(whole, np.concatenate([a, b]))
  with pytest.raises(ValueError, match='does not divide'):
    next(data.train_batches(ds, 8, seed=0, epoch=0, process_count=3))
  x, _ = next(data.train_batches(ds, 8, seed=0, epoch=0))
  assert x.dtype == np.float32 and x.shape == (8, 4, 4, 1)


def test_augmentation_differs_per_process_and_resumes_exactly():
  n = 64
  images = np.tile(np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1), (n, 1, 1, 1))  # all alike
  ds = data.Dataset('toy', data.Split(images, np.zeros(n, np.int32)), data.Split(images, np.zeros(n, np.int32)),
                    10, np.zeros(1, np.float32), np.ones(1, np.float32))
  batches = lambda **kw: [x for x, _ in data.train_batches(ds, 8, seed=0, epoch=0,
                                                           augmentation=True, **kw)]
  p0, p1 = batches(process_index=0, process_count=2), batches(process_index=1, process_count=2)
  # Identical images: any difference between the processes' slices is their augmentation.
  assert not all(np.array_equal(a, b) for a, b in zip(p0, p1))
  np.testing.assert_array_equal(np.stack(batches(process_index=1, process_count=2)), np.stack(p1))
  resumed = batches(process_index=1, process_count=2, start=3)
  np.testing.assert_array_equal(np.stack(resumed), np.stack(p1[3:]))


def test_eval_batches_cover_the_whole_split():
  ds = _toy_dataset()
  seen = []
  for x, y, mask in data.eval_batches(ds.train, ds, 16):
    assert x.shape[0] == y.shape[0] == mask.shape[0] == 16
    seen.append(y[mask])
  np.testing.assert_array_equal(np.concatenate(seen), ds.train.labels)


def test_augment_crops_and_flips():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 6, 6, 3), dtype=np.uint8)
  no_pad = data.augment(images, np.random.default_rng(1), pad=0)
  for a, b in zip(images, no_pad):
    assert np.array_equal(a, b) or np.array_equal(a[:, ::-1], b)
  out = data.augment(images, np.random.default_rng(1), pad=2)
  assert out.shape == images.shape and not np.array_equal(out, images)
