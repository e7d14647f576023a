"""The README's usage example runs as a newcomer would copy it."""

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'


def test_usage_example_trains_two_exits(tmp_path):
  blocks = re.findall(r'```python\n(.*?)```', README.read_text(), flags=re.S)
  assert blocks, 'README has no python example'
  script = tmp_path / 'example.py'
  script.write_text(blocks[0])
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  losses = [float(v) for v in re.findall(r'[\d.]+(?:e-?\d+)?', out.stdout.split(':', 1)[1])]
  assert len(losses) == 2 and max(losses) < 0.3, out.stdout
