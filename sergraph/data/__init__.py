"""Data, from audio to batches: corpora, features (cached), folds, graphs and the DataModule."""
