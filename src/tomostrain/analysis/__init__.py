"""Battery numbers from segmented volumes: phase fractions, shell thickness, depth profiles,
particle statistics."""
from .quantify import quantify

__all__ = ["quantify"]
