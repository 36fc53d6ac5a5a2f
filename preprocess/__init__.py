"""Offline preprocessing: 5x->20x hierarchy building, consistency checks, demo data, raw-slide feature extraction."""
