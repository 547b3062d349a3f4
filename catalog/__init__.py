"""The catalog: what each provider and model can do and cost (shipped data refined by live
discovery), per-provider parameter schemas, token counting, cost and model-name detection.

It imports only `protocol`, so the broker, the workers and the front ends can all use it.
"""
