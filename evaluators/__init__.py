"""Pricing and scoring candidates: exact costs, BN-recalibrated accuracy, executors."""
from .cost import CostModel, Costs

__all__ = ["CostModel", "Costs"]
