"""churnwatch.replay."""
