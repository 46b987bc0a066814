"""Data: sources behind ``--data``, image decoding, archives and transforms."""

from .sources import DataError, DataSplits, load_data

__all__ = ["DataError", "DataSplits", "load_data"]
