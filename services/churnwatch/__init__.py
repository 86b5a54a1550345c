"""
churnwatch: an event-driven early-warning system for customer churn.
"""

__version__ = "0.1.0"
