"""The Textual control center. It reads through the runtime's query API and event stream and
writes only by sending command envelopes; it never touches the database directly."""
