"""Leaf helpers (nothing here imports project code): errors, atomic IO, seeding, logging, device, metrics."""
