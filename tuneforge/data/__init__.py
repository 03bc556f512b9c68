"""Datasets: formats, loading, validation, cleaning, splitting and statistics."""
