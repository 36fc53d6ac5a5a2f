"""Survival building blocks of the survival task (:mod:`training.tasks.survival`, docs/survival.md):
losses (:mod:`.losses`), metrics (:mod:`.metrics`) and result files (:mod:`.report`)."""
