"""Wan model code with no Ray in it: catalog, loading, generation, video I/O."""
