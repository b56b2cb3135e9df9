"""The optimizer lab: reproductions and comparisons that use only fastoptim's public API."""
