"""GEM-VLA training workspace: episode datasets, sim data collection, training loop, export and evaluation."""
