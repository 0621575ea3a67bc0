"""Sessions, messages, turns and the generation task (service code: no web or driver imports)."""
