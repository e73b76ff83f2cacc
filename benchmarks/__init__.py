"""Speed and accuracy suites, side by side with peers; each writes JSON (see run.py)."""
