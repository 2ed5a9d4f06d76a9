"""Supervisor cost: start latency, idle CPU and memory among many processes, output forwarding throughput."""
