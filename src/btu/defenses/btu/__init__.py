"""Backdoor Token Unlearning (Jiang et al., AAAI 2025): detection, unlearning, the pipeline."""

from .config import BTUConfig
from .detection import DetectionResult, detect, flag_count, row_distances, top_tokens
from .unlearning import threshold_value, unlearn_rows

__all__ = ["BTUConfig", "DetectionResult", "detect", "flag_count", "row_distances", "top_tokens",
           "threshold_value", "unlearn_rows"]
