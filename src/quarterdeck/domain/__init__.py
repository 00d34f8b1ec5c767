"""Pure domain: envelopes, state machines, ledger hashing. No I/O, no imports from above."""
