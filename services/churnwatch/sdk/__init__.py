"""churnwatch.sdk."""
