"""Paths the tests share (importable because pytest puts tests/ on sys.path)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "static" / "examples"
