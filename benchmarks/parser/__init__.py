"""Parser benchmark: lines per second on one core and peak memory while streaming a generated log."""
