"""Text (transformer) classifiers: distilling, exporting and shipping them (issue 14)."""
