"""Runs figure scripts one after another in this process (imports shared), for figure_scripts.py.

    python run_figures.py SCRIPT IMAGE [SCRIPT IMAGE ...]

Each script runs as ``__main__`` with ``sys.argv = [SCRIPT, IMAGE]``; its output is captured.
This process's standard output carries only one JSON line per script, in order:
``{"script": SCRIPT, "ok": bool, "output": "..."}``.
"""

import contextlib
import io
import json
import os
import runpy
import sys
import traceback

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

report = sys.stdout
sys.stdout = sys.stderr  # anything not captured below stays off the report
pairs = sys.argv[1:]
for script, image in zip(pairs[::2], pairs[1::2]):
  captured = io.StringIO()
  argv, path, cwd = sys.argv, list(sys.path), os.getcwd()
  sys.argv = [script, image]
  sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
  ok = True
  with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
    try:
      runpy.run_path(script, run_name='__main__')
    except SystemExit as stop:
      ok = stop.code in (None, 0)
    except BaseException:  # pylint: disable=broad-except
      ok = False
      traceback.print_exc()
    finally:
      plt.close('all')
      sys.argv, sys.path[:] = argv, path
      os.chdir(cwd)
  if ok and not os.path.isfile(image):
    ok = False
    captured.write(f'\n(it ran but wrote no {image})')
  print(json.dumps({'script': script, 'ok': ok, 'output': captured.getvalue()}), file=report,
        flush=True)
