"""Recovery figures: evidence-to-verdict latency, and fallback-to-verified-GPU time, on the simulator."""
