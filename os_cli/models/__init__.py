"""Loading models and tokenizers: placement, dtype, attention, quantization, hub arguments, weight fingerprints."""
