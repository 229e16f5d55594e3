"""GEM-VLA model core."""
