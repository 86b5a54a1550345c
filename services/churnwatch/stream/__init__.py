"""churnwatch.stream."""
