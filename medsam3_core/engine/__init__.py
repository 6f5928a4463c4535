"""Engine layer: SAM3 run over images and volumes. Preprocessing, the batched detector and its heads, the memory
tracker and its batched memory attention, detector/tracker fusion, the per-volume feature store, post-processing, and
the volume engine (:mod:`medsam3_core.engine.volume_engine`) that drives them slice by slice.
"""
