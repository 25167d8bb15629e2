"""Shoal against KubeRay's own controller: RayService, RayCluster and Pods made by KubeRay."""
