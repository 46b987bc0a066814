"""Data: sources behind ``--data``, image decoding, archives and transforms."""

from .datasets import DataError, DataSplits
from .sources import load_data

__all__ = ["DataError", "DataSplits", "load_data"]
