"""Evaluation: the metrics (one table of them), evaluating a model on a store, comparing a
control run with an LDS run, the inference gap, and the figures.

    lds.evaluation             evaluate, EvalResult, compare, the tables (evaluate.py)
    lds.evaluation.metrics     per-image metric functions and the metric table
    lds.evaluation.gap         the inference gap (Table 2)
    lds.evaluation.figures     Figure 2

Above training and the models (it may import both); below experiments and the command lines.
"""

from lds.evaluation.evaluate import (EvalFileError, EvalResult, aggregate, compare,
                                     comparison_table, evaluate, make_validator, print_result,
                                     result_table)

__all__ = ["EvalFileError", "EvalResult", "aggregate", "compare", "comparison_table", "evaluate",
           "make_validator", "print_result", "result_table"]
