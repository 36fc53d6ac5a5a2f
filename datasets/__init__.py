"""The data layer: what a task is, and reading and checking its slides (imports only utils/).

* :mod:`datasets.tasks` (task registry: dataset CSV, labels, class names, prompt file) and
  :mod:`datasets.dataset_csv` (reading and validating ``dataset_csv/<task>.csv``);
* :mod:`datasets.features` (HDF5 feature files: layout, writing, one slide as a :class:`SlideBag` of
  :mod:`datasets.bag`) and :mod:`datasets.bag_dataset` (a cached map-style dataset of bags);
* :mod:`datasets.hierarchy` (linking 20x patches to their 5x parents), :mod:`datasets.fingerprint`
  (what an input file is now) and :mod:`datasets.slide_check` (every slide checked before the first epoch);
* :mod:`datasets.splits` (few-shot split files) and :mod:`datasets.prompt_file` (hierarchical prompts);
* survival: :mod:`datasets.survival` (CSV, cases, bins, case-level splits), :mod:`datasets.case_bag`
  (one case as one bag) and :mod:`datasets.survival_prompts` (attribute prompts).
"""
