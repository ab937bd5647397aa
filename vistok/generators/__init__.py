"""Generator families."""
