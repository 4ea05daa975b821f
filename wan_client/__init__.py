"""The `wan-serve` command line: a client of the service over HTTP (no torch, no Ray)."""
