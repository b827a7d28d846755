"""Datasets as sharded Parquet on any fsspec URI, each example with a stable id."""

from crossdistill.data.shards import Dataset, read_dataset, write_dataset

__all__ = ["Dataset", "read_dataset", "write_dataset"]
