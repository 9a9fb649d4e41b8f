"""Kubernetes tooling (not needed at run time, never imported by serving): the KubeRay
serveConfigV2 derived from the one Serve config, and the offline checks of the Kubernetes
manifests under deploy/k8s/.

``python -m papersearch.k8s.serve_config`` regenerates the serveConfigV2 patches;
``python -m papersearch.k8s.check`` renders every overlay and validates it.
"""
