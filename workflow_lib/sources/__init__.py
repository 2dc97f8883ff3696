"""Inputs: what the workflow knows of a raster from its header, without reading a pixel."""
