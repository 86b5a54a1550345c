"""churnwatch.store."""
