"""churnwatch.api."""
