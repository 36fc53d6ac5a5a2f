"""HiLa-style hierarchical vision-language survival model (docs/survival.md §8): one module per mechanism."""
