"""Questions: GSM8K from the hub or JSONL files, and a synthetic arithmetic task."""

from latentbridge.data.examples import Example, Splits
from latentbridge.data.loading import load_splits, planned_split_sizes

__all__ = ["Example", "Splits", "load_splits", "planned_split_sizes"]
