"""churnwatch.notify."""
