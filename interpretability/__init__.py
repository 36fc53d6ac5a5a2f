"""Interpretability of HiVE-MIL: which descriptions and which patches drive a slide's prediction.

* :mod:`interpretability.attribution` - :func:`explain_slide` -> :class:`SlideExplanation` (pure numbers);
* :mod:`interpretability.plots` - contribution bar charts and slide heatmaps (matplotlib, Agg);
* :mod:`interpretability.heatmaps` - per-patch scores (HiVE-MIL class evidence, baseline attention)
  drawn over the slide thumbnail or the patch grid, top tiles, ``scores.npz`` (one drawing for all);
* :mod:`interpretability.loading` - from a ``main.py`` run folder to the model, prompts and a slide;
* :mod:`interpretability.slide_inputs` / :mod:`interpretability.prediction` - new slides (ids, feature
  files, tensors, raw slides) predicted by a run's fold checkpoints (``predict.py``);

Used by ``explain.py`` and ``predict.py`` (CLIs) and ``interpretability_analysis.ipynb``.
"""

from interpretability.attribution import (
    Description,
    DrillDown,
    SlideExplanation,
    contributions_frame,
    drilldown_frame,
    explain_slide,
    normalise_rows,
    text_contributions,
    top_patches_frame,
    topk_text_scores,
)
from interpretability.loading import (
    ensure_demo_run,
    first_test_slide,
    load_prompts,
    load_run,
    load_slide,
    read_run_config,
    resolve_run_files,
)

__all__ = [
    "Description",
    "DrillDown",
    "SlideExplanation",
    "contributions_frame",
    "drilldown_frame",
    "ensure_demo_run",
    "explain_slide",
    "first_test_slide",
    "load_prompts",
    "load_run",
    "load_slide",
    "normalise_rows",
    "read_run_config",
    "resolve_run_files",
    "text_contributions",
    "top_patches_frame",
    "topk_text_scores",
]
