"""Input/output layer: reading scans with their geometry (NIfTI, NRRD, MHA, DICOM series, 2D pictures), the
:class:`~medsam3_core.io.geometry.Volume` type, and writing results (label maps, reports, DICOM SEG, overlay pictures),
always atomically. Nothing here imports torch or a model.
"""
