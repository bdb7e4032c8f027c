"""Data: the TextDataset type, file readers, built-in sources."""

from .dataset import TextDataset
from .readers import read_file, write_file
from .sources import DEFAULT_DATASET, load_source

__all__ = ["TextDataset", "read_file", "write_file", "load_source", "DEFAULT_DATASET"]
