"""Generated protocol code; see README.md."""
