"""Models: loading base models and tokenizers, LoRA, freezing and parameter groups."""
