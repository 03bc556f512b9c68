"""The bundled demo: the whole fine-tuning journey, offline."""
