"""Picking deployments, retrying, falling back: everything that happens before the first byte."""
from .router import Router

__all__ = ["Router"]
