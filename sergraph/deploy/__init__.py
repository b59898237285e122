"""Deployment: export fold models as one bundle, load it and predict on new audio."""
