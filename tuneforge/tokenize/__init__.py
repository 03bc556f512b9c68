"""Tokenization: chat templates, label masks, truncation, packing and batching."""
