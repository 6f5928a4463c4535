"""Training data: datasets → cases (manifests, synthetic sources) → (image, text, instances) prompt samples."""
