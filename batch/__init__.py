"""Batch runs: OpenAI Batch / Anthropic Message Batches / llmrelay job files through the broker.

`batch.runner.run_batch` is the library entry point (the CLI and the HTTP gateway call it).
"""
