"""Leaf helpers (nothing here imports project code).

Errors as one line (:mod:`utils.errors`), atomic writes, folder locks, command-line flags declared on
dataclass fields (:mod:`utils.flags`), seeding, device and mixed precision, magnification values,
classification metrics, bag prefetching, the run log, project and cache paths, Ray cluster start-up.
"""
