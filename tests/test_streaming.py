"""Streamed TFDS data: views, workers, process slices, exact resume, prefetch, bounded memory."""

import dataclasses
import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from experiments import data, mock_imagenet, streaming, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 16


@pytest.fixture
def jpegs(write_jpegs):
  return write_jpegs(48, 20)


@pytest.fixture
def dataset(jpegs):
  return data.load(mock_imagenet.NAME, jpegs, image_size=SIZE, workers=3)


def test_a_streamed_split_reads_by_index_at_one_size(dataset, jpegs):
  builder = streaming.find_builder(mock_imagenet.NAME, jpegs)
  source = builder.as_data_source(split='train')
  assert len(dataset.train) == 48 and len(dataset.test) == 20  # 'validation' is the held-out split
  assert dataset.image_shape == (SIZE, SIZE, 3) and dataset.num_classes == 4
  sizes = {np.asarray(source[i]['image']).shape[:2] for i in range(10)}
  assert len(sizes) > 1  # the source's images differ in size; the views do not
  idx = np.array([5, 0, 17])
  images, labels = dataset.train.read(idx)
  assert images.shape == (3, SIZE, SIZE, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, [source[int(i)]['label'] for i in idx])
  np.testing.assert_array_equal(images, dataset.train.read(idx)[0])  # evaluation: no randomness
  part = dataset.train.take(np.array([17, 5]))
  np.testing.assert_array_equal(part.read(np.array([1, 0]))[1], labels[[0, 2]])


def test_views_do_not_depend_on_the_number_of_workers(dataset):
  idx = np.arange(12)
  one = dataclasses.replace(dataset.train, workers=1)
  for rng_seed in (None, 7):
    rng = lambda: None if rng_seed is None else np.random.default_rng(rng_seed)
    np.testing.assert_array_equal(one.read(idx, rng())[0], dataset.train.read(idx, rng())[0])
  assert not np.array_equal(dataset.train.read(idx, np.random.default_rng(7))[0],
                            dataset.train.read(idx)[0])


def test_center_crop_and_random_resized_crop_by_hand():
  # A 30x60 image whose central 30x30 square is white and the rest black: the evaluation view
  # (crop_fraction 1) is that square (only its edge columns blend with the black beside it,
  # as bilinear resampling does); with 0.5 it is the central 15x15, far from any black.
  image = np.zeros((30, 60, 3), np.uint8)
  image[:, 15:45] = 255
  whole = streaming.center_crop(image, 10, 1.0)
  assert whole.shape == (10, 10, 3) and np.all(whole[:, 1:-1] == 255) and np.all(whole[:, 0] > 0)
  assert np.all(streaming.center_crop(image, 10, 0.5) == 255)
  # Full-area, square crops of a square image are the image itself, flipped half the time.
  square = np.random.default_rng(0).integers(0, 256, (20, 20, 1), dtype=np.uint8)
  flips = []
  for seed in range(20):
    out = streaming.random_resized_crop(square, 20, np.random.default_rng(seed), scale=(1, 1),
                                        ratio=(1, 1))
    assert out.shape == (20, 20, 1)
    flipped = np.array_equal(out, square[:, ::-1])
    assert flipped or np.array_equal(out, square)
    flips.append(flipped)
  assert 0 < sum(flips) < 20


def test_small_images_of_one_size_get_cifar_views(tmp_path):
  mock_imagenet.write(str(tmp_path), num_train=16, num_test=4, min_side=12, fixed_size=True,
                      dataset_name='small_jpegs')
  small = data.load('small_jpegs', str(tmp_path), image_size=12, workers=2)
  source = streaming.find_builder('small_jpegs', str(tmp_path)).as_data_source(split='train')
  assert small.train.views == 'pad_crop'
  idx = np.arange(6)
  images, _ = small.train.read(idx)
  np.testing.assert_array_equal(images, np.stack([source[i]['image'] for i in idx]))  # whole
  augmented, _ = small.train.read(idx, np.random.default_rng(3))
  for image, view, stream in zip(images, augmented, np.random.default_rng(3).spawn(6)):
    np.testing.assert_array_equal(view, streaming.pad_crop_flip(image, stream))
  # By hand: the window of the zero-padded image at the offset the stream draws first (each
  # of 0..8 rows and columns), mirrored or not.
  ramp = np.arange(12 * 12, dtype=np.uint8).reshape(12, 12, 1)
  dy, dx = np.random.default_rng(0).integers(0, 9, 2)
  out = streaming.pad_crop_flip(ramp, np.random.default_rng(0))
  want = np.pad(ramp, ((4, 4), (4, 4), (0, 0)))[dy:dy + 12, dx:dx + 12]
  assert np.array_equal(out, want) or np.array_equal(out, want[:, ::-1])


def test_processes_read_their_slices_and_resume_exactly(dataset):
  def epoch(**kw):
    return list(data.train_batches(dataset, 8, seed=3, epoch=1, augmentation=True, **kw))
  whole = epoch()
  halves = [epoch(process_index=i, process_count=2) for i in range(2)]
  assert len(whole) == len(halves[0]) == 6
  for (_, y), (_, a), (_, b) in zip(whole, *halves):
    np.testing.assert_array_equal(y, np.concatenate([a, b]))
  resumed = epoch(process_index=1, process_count=2, start=4)
  for (x, y), (rx, ry) in zip(halves[1][4:], resumed):
    np.testing.assert_array_equal(x, rx)
    np.testing.assert_array_equal(y, ry)
  assert whole[0][0].dtype == np.float32 and whole[0][0].shape == (8, SIZE, SIZE, 3)


def test_eval_batches_cover_a_streamed_split_over_processes(dataset):
  per_process = [list(data.eval_batches(dataset.test, dataset, 8, process_index=i,
                                        process_count=2)) for i in range(2)]
  seen = [np.concatenate([a[1], b[1]])[a[2]] for a, b in zip(*per_process)]
  np.testing.assert_array_equal(np.concatenate(seen),
                                dataset.test.read(np.arange(len(dataset.test)))[1])


def test_prefetch_keeps_order_passes_errors_and_stops_early():
  produced = []

  def numbers(fail_at=None):
    for i in range(100):
      if i == fail_at:
        raise RuntimeError(f'broken at {i}')
      produced.append(i)
      yield i

  with streaming.prefetch(numbers(), size=2, place=lambda i: 10 * i) as ready:
    assert [next(ready) for _ in range(5)] == [0, 10, 20, 30, 40]
  assert len(produced) <= 5 + 2 + 1  # it stopped: two in the queue, one being placed
  assert list(streaming.prefetch(iter(range(4)))) == [0, 1, 2, 3]
  with pytest.raises(RuntimeError, match='broken at 3'):
    list(streaming.prefetch(numbers(fail_at=3)))


@pytest.mark.slow
def test_training_streams_a_jpeg_data_set(tmp_path, jpegs):
  config = train.Config(model='branched', dataset=mock_imagenet.NAME, image_size=SIZE,
                        batch_size=8, epochs=1, num_exits=2, width=4, learning_rate=0.05,
                        validation_size=8, eval_every=0)
  results = train.train_and_evaluate(config, tmp_path / 'run', data_dir=jpegs, data_workers=2)
  assert len(results['exits']) == 2
  assert all(0.0 <= e['test_accuracy'] <= 1.0 for e in results['exits'])
  stored = json.loads((tmp_path / 'run' / 'config.json').read_text())
  assert stored['image_size'] == SIZE


_PEAK = textwrap.dedent('''
    import json, sys
    import numpy as np
    from experiments import data, streaming
    def status_mb(key):  # VmRSS: resident now; VmHWM: the peak since the last reset (Linux)
      for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
          return int(line.split()[1]) / 1024
    ds = data.load('mock_imagenet', sys.argv[1], image_size=160, workers=2)
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')  # resets VmHWM to the resident size now
    before = status_mb('VmRSS')
    if sys.argv[2] == 'stream':
      batches = data.train_batches(ds, 16, seed=0, epoch=0, augmentation=True)
      with streaming.prefetch(batches, size=2) as ready:
        for images, labels in ready:
          pass
    else:  # the in-memory path: the whole split read into arrays, as for the four we prepare
      images, labels = ds.train.read(np.arange(len(ds.train)))
    print(json.dumps({'before': before, 'peak': status_mb('VmHWM')}))
''')


@pytest.mark.slow
def test_streaming_stays_under_a_memory_cap_that_reading_whole_exceeds(tmp_path):
  # 1,500 training images at 160x160x3 are 115 MB as uint8 arrays; batches of 16 are 4.9 MB of
  # float32 each. The cap on what reading adds to the process: 60 MB.
  mock_imagenet.write(str(tmp_path), num_train=1500, num_test=10, min_side=40, max_side=80)
  cap_mb = 60
  grown = {}
  for mode in ('stream', 'whole'):
    out = subprocess.run([sys.executable, '-c', _PEAK, str(tmp_path), mode], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    grown[mode] = rss['peak'] - rss['before']
  print(f'peak resident memory added, MB: {grown}')  # shown with pytest -s
  assert grown['stream'] < cap_mb < grown['whole'], grown
