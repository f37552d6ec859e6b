"""Data: the sample schema, WebDataset shards, the synthetic world and Ray Data pipelines."""
