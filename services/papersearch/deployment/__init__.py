"""Deployment tooling (not needed at run time): the KubeRay serveConfigV2 derived from the one
Serve config, and the offline checks of the Kubernetes manifests under deploy/k8s/.

``python -m papersearch.deployment.serve_config`` regenerates the serveConfigV2 patches;
``python -m papersearch.deployment.check`` renders every overlay and validates it.
"""
