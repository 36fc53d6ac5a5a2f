"""Task registry, HDF5 feature bags, 5x/20x hierarchy linking, splits and demo data."""
