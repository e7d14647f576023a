"""The machinery the studies share (:mod:`experiments.reproduce`, :mod:`experiments.confirm`,
:mod:`experiments.confirm_amortized`, and the pilot, :mod:`experiments.pilot`), a job a module:

- :mod:`~experiments.study.keys`: each run's key and the folder layout, written and read there only;
- :mod:`~experiments.study.regime`: what a study's runs share, and each run's configuration;
- :mod:`~experiments.study.store`: finished runs read back (outcomes, learning curves, compute);
  it never writes;
- :mod:`~experiments.study.runner`: the runs a folder lacks, trained;
- :mod:`~experiments.study.sweep`: each (model, method)'s rate, chosen by its own sweep;
- :mod:`~experiments.study.stats`: the statistics, and the one paired test every report runs;
- :mod:`~experiments.study.arms`, :mod:`~experiments.study.endpoints` and
  :mod:`~experiments.study.declared`: declared test families, their endpoints and rows;
- :mod:`~experiments.study.compute`: a study's training time, per part.
"""
