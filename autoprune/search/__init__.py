"""autoprune package."""
