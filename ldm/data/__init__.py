"""Data: IDX image files decoded once into tensors, served in whole batches."""
