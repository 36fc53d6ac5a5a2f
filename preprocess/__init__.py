"""Offline preprocessing: building the 5x->20x hierarchical files (:mod:`preprocess.hierarchy`) and
checking them (:mod:`preprocess.consistency`), the generated demo tasks (:mod:`preprocess.demo`,
:mod:`preprocess.demo_survival`, :mod:`preprocess.demo_tasks`), and raw-slide feature extraction (``wsi/``)."""
