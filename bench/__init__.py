"""Benchmarks: `python -m bench.throughput` (ftstudio's engine against the default Hugging Face
Trainer path). Results are written under bench/results/ (not committed)."""
