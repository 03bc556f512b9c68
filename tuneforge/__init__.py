"""TuneForge: self-hosted fine-tuning for GPT-style language models."""

__version__ = "0.1.0"
