"""The llama.cpp worker's own parts: finding llama-server, supervising it, a tiny test model."""
