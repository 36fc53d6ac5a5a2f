"""Interpretability of HiVE-MIL: which descriptions and which patches drive a slide's prediction.

* :mod:`interpretability.attribution` - :func:`explain_slide` -> :class:`SlideExplanation` (pure numbers);
* :mod:`interpretability.plots` - contribution bar charts and slide heatmaps (matplotlib, Agg);
* :mod:`interpretability.heatmaps` - per-patch scores (HiVE-MIL class evidence, baseline attention)
  drawn over the slide thumbnail or the patch grid, top tiles, ``scores.npz`` (one drawing for all);

Models, prompts and slides come in as objects: reading a run folder is :mod:`inference.runs`. Used by
``explain.py`` and ``predict.py`` (CLIs, through :mod:`inference`) and ``interpretability_analysis.ipynb``.
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

__all__ = [
    "Description",
    "DrillDown",
    "SlideExplanation",
    "contributions_frame",
    "drilldown_frame",
    "explain_slide",
    "normalise_rows",
    "text_contributions",
    "top_patches_frame",
    "topk_text_scores",
]
