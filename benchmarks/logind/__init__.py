"""logind PrepareForSleep listener against a real bus: latency from signal to callback, tool cost while idle."""
