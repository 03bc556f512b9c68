"""The generation engine: one base model, adapters and fine-tunes on it, continuous batching.

- `registry`: model ids -> folders (the model store plus sources such as the job store).
- `engine`: `Engine` loads the base model, adapters (LRU) and merged fine-tunes, and runs the
  scheduler thread that batches every running sequence into one decode step.
- `params`: `SamplingParams`, `GenerationRequest`, `Delta`.
- `sampling`, `tokens`, `json_mode`: logits processing, incremental detokenization and stop
  strings, JSON-constrained decoding.

Nothing here imports the server.
"""
