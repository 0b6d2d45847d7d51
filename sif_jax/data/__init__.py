"""Data: procedural scenes, questions, traces, SIF records, TFDS builders, region masks."""
