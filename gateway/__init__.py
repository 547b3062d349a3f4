"""The HTTP front door: OpenAI- and Anthropic-compatible endpoints over the broker's client API.

The gateway is one more client of the broker (it speaks ZeroMQ through `protocol.client`);
the broker's loop never sees HTTP.
"""
