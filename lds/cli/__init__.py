"""The command lines of lds/ (mounted by the root cli.py): train, evaluate and compare, the
inference gap and studies, the demo. Nothing in the library imports these modules."""
