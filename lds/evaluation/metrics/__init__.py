"""Evaluation metrics, each a function returning one value per image (see docs/evaluation.md)."""

from lds.evaluation.metrics.batch import batch_metrics, segmentation_masks
from lds.evaluation.metrics.table import (DECODED_PREFIX, METRICS, METRICS_WITH_GT, METRICS_WITHOUT_GT,
                               QUERY_PREFIX, SEGMENTATION_METRICS, Metric, metric,
                               segmentation_source_of)
from lds.evaluation.metrics.config import MetricsConfig
from lds.evaluation.metrics.reconstruction import mse, rmse_mulmon
from lds.evaluation.metrics.segmentation import (adjusted_rand_index, argmax_labels, binary_iou,
                                      miou_greedy, miou_hungarian)
from lds.evaluation.metrics.slots import (duplicate_pairs_without_gt, duplicated_gt_components,
                               slot_binary_masks, slot_similarity)

__all__ = [
    "DECODED_PREFIX", "METRICS", "METRICS_WITH_GT", "METRICS_WITHOUT_GT", "Metric", "MetricsConfig",
    "QUERY_PREFIX", "SEGMENTATION_METRICS", "metric", "segmentation_masks", "segmentation_source_of",
    "adjusted_rand_index", "argmax_labels", "batch_metrics", "binary_iou",
    "duplicate_pairs_without_gt", "duplicated_gt_components", "miou_greedy", "miou_hungarian",
    "mse", "rmse_mulmon", "slot_binary_masks", "slot_similarity",
]
