"""churnwatch.core."""
