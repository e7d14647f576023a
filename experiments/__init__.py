"""Command-line programs: train, describe, bench."""
