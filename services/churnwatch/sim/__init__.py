"""churnwatch.sim."""
