"""Data: prompt files, datasets, chat formatting and packing."""
