"""Model layer: building SAM3 from transformers' ``Sam3*`` classes, recognising and loading every weight format
(model folders, safetensors, Meta's native ``.pt``, Medical SAM3 trainer checkpoints, LoRA adapters), converting,
downloading released weights, and the offline CLIP tokenizer.
"""
