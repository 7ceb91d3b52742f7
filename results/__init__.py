"""Turning run folders into numbers: log parsing, run collection, paper tables, plots, sweeps.

Nothing here imports torch, so the parser and the table tools start instantly.
"""
