"""Small test doubles for the supervisor's generic mechanics (not Ollama look-alikes: see tests/ollama_sim)."""
