"""The embedded async runtime. Never imports textual: headless mode must not load the TUI."""
