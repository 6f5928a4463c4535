"""Slicer-dependent helpers of the MedicalSAM3Slicer module: scene reading/writing and the self-test."""
