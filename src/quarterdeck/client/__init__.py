"""The SDK for programs that feed Quarterdeck: submit envelopes into a state directory or
database from any process, getting one durable result per envelope."""

from quarterdeck.client.submit import Client

__all__ = ["Client"]
