"""LLM providers behind one streaming interface (``base.LLMProvider``)."""
