"""Views of captures and scene stores in Rerun (https://rerun.io): the live view of a capture
(`ldsrig capture session --view`) and a stored scene's views in their poses (`ldsrig data view`).

Rerun is an optional extra (``pip install 'ldsrig[view]'``): it is imported only when a view is
asked for, and nothing outside this package imports it.
"""
