"""The decode engine: model streams (KV cache, masks), the refill scheduler, speculative rounds, fixed slots.

Takes token ids and settings, gives per-row results; knows nothing of recipes, files or the console."""
