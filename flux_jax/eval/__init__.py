"""Evaluation: multi-view accuracy (later: Token Optimization tables, predict, export)."""
