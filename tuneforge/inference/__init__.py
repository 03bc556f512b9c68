"""The generation engine: one base model, adapters and fine-tunes on it, continuous batching.

- `registry`: model ids -> folders (the model store plus sources such as the job store).
- `engine`: `Engine` runs the scheduler thread that batches every running sequence into one
  decode step (admission, prefill, decode).
- `residency`: which models are in memory (the base, adapters LRU, merged fine-tunes loaded on
  a background thread) and the tokenizer loader; `vocab`: what a model's tokenizer gives
  (encoding, chat rendering, token-bytes tables).
- `lanes`: the rows decoded together and their left-padded KV cache (tensor bookkeeping).
- `decoding`: per-token decisions: sampling, stop strings, JSON mode, finish reasons.
- `params`: `SamplingParams`, `GenerationRequest`, `Delta`, `RequestStream`, the errors.
- `sampling`, `tokens`, `json_mode`: logits processing, incremental detokenization and stop
  strings, JSON-constrained decoding.

Nothing here imports the server.
"""
