"""Posed image sets: the store's scenes as COLMAP models and nerfstudio transforms.json folders
(export), the same formats back into a store (import), and an audit of stored poses against the
images (triangulated image features).

- ``conventions``: camera axes, pixel-centre origins and distortion of each format, and the one
  place that imports pycolmap (an optional extra, ``pip install 'ldsrig[colmap]'``).
- ``scenes``: reading a scene's posed views from a store, refusing stores without poses.
- ``nerfstudio``, ``colmap``: writer and reader of each format.
- ``audit``: ``ldsrig data audit-poses``.

Conventions and layouts: docs/store.md ("Posed image sets").
"""
