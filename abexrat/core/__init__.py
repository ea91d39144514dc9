"""The core: errors, atomic writes and hashing, safe YAML, the Ray session.

Every other part of abexrat may import these; they import nothing else of abexrat (an
import-linter contract in pyproject.toml holds them to it).
"""
