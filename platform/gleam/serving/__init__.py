"""Serving: the Ray Serve application (ingress, retriever, explainer) and request validation."""
