"""Shoal's Kubernetes API: custom resource models, one sub-package per API version.

This layer imports nothing else of Shoal's; everything else may import it.
"""
