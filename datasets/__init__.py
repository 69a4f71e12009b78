"""The scene store (zarr), synthetic scenes, importers and torch datasets over stores."""
