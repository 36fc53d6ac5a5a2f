"""Training loop, metrics and results, seeding, atomic IO, logging and configuration."""
