"""Tiles into one mosaic per dataset, and mosaics into one aligned stack, streamed through VRTs."""
